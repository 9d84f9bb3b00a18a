"""Orbax checkpoints of a run: train state, data iterator position, config.

Each step directory holds three items: `state` (params, optimizer state, step,
RNG), `data` (the Grain iterator's state) and `config` (the experiment, used to
refuse resuming a workdir that belongs to another experiment).
"""

import json
import os

import jax
import orbax.checkpoint as ocp

from mmfusion import errors

# Config parts that must match to resume: they fix the state's shapes, the
# data and the randomness. Schedules, intervals and total_steps may change.
IDENTITY_KEYS = ('seed', 'model', 'optimizer.name', 'data.name',
                 'data.modalities', 'data.overrides')


def _flatten(tree, prefix=''):
  if isinstance(tree, dict):
    out = {}
    for k, v in tree.items():
      out.update(_flatten(v, f'{prefix}{k}.'))
    return out
  return {prefix[:-1]: tree}


def identity(config_dict: dict) -> dict:
  """The flattened parts of a config that a checkpoint depends on."""
  flat = _flatten(json.loads(json.dumps(config_dict, default=list)))
  return {k: v for k, v in flat.items()
          if any(k == p or k.startswith(p + '.') for p in IDENTITY_KEYS)}


class Checkpointer:
  """A CheckpointManager under `workdir/checkpoints` for one experiment."""

  def __init__(self, workdir: str, *, max_to_keep: int = 3):
    self.directory = os.path.join(os.path.abspath(workdir), 'checkpoints')
    self.manager = ocp.CheckpointManager(
        self.directory,
        item_names=('state', 'data', 'config'),
        options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep,
                                             create=True))

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def check_compatible(self, config_dict: dict):
    """Refuses, in one sentence, a workdir saved by another experiment."""
    step = self.latest_step()
    if step is None:
      return
    saved = self.manager.restore(
        step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))['config']
    before, now = identity(saved), identity(config_dict)
    diffs = [f'{k}: {before.get(k)!r} there, {now.get(k)!r} now'
             for k in sorted(set(before) | set(now)) if before.get(k) != now.get(k)]
    if diffs:
      raise errors.UserError(
          f'{self.directory} holds a checkpoint (step {step}) of a different '
          f'experiment ({"; ".join(diffs[:3])}); pass a new --workdir, or the '
          f'same config to resume it.')

  def save(self, step: int, state, data_state: dict, config_dict: dict,
           force: bool = False):
    self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        data=ocp.args.JsonSave(data_state),
        config=ocp.args.JsonSave(json.loads(json.dumps(config_dict, default=list)))),
        force=force)

  def restore(self, step: int, abstract_state):
    """(state, data_state) of `step`, placed like `abstract_state`."""
    try:
      restored = self.manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract_state),
          data=ocp.args.JsonRestore()))
    except (ValueError, KeyError, TypeError) as e:
      raise errors.UserError(
          f'the checkpoint at step {step} in {self.directory} does not fit '
          f'this model ({str(e).splitlines()[0][:200]}); pass a new --workdir.'
      ) from None
    return restored['state'], restored['data']

  def wait(self):
    self.manager.wait_until_finished()

  def close(self):
    self.manager.close()


def abstract(state):
  """ShapeDtypeStructs (with shardings) for restoring into `state`'s layout."""
  return jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
