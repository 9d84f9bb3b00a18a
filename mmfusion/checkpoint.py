"""Orbax checkpoints of a run: train state, data iterator position, config.

Each step directory holds three items: `state` (params, optimizer state, step,
RNG), `data` (the Grain iterator's state) and `config` (the experiment, used to
refuse resuming a workdir that belongs to another experiment).
"""

import json
import os

import jax
import orbax.checkpoint as ocp

from mmfusion.runtime import errors

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

  def __init__(self, workdir: str, *, max_to_keep: int = 3,
               subdir: str = 'checkpoints'):
    self.directory = os.path.join(os.path.abspath(workdir), subdir)
    self.manager = ocp.CheckpointManager(
        self.directory,
        item_names=('state', 'data', 'config'),
        options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep,
                                             create=True))

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def _saved_config(self, step: int) -> dict:
    return self.manager.restore(
        step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))['config']

  def check_compatible(self, config_dict: dict, step: int):
    """Refuses, in one sentence, a checkpoint saved by another experiment."""
    before, now = identity(self._saved_config(step)), identity(config_dict)
    diffs = [f'{k}: {before.get(k)!r} there, {now.get(k)!r} now'
             for k in sorted(set(before) | set(now)) if before.get(k) != now.get(k)]
    if diffs:
      raise errors.UserError(
          f'{self.directory} holds a checkpoint (step {step}) of a different '
          f'experiment ({"; ".join(diffs[:3])}); pass a new --workdir, or the '
          f'same config to resume it.')

  def restore_latest(self, abstract_state, config_dict: dict):
    """(step, state, data_state) of the newest checkpoint that reads back.

    A damaged checkpoint (half-written, truncated, unreadable) is moved to
    `damaged_checkpoints/` beside `checkpoints/`, said so, and the next older
    one is tried, so a run never crash-loops on it. Returns (None, None, None)
    when there is nothing to resume.
    """
    for step in sorted(self.manager.all_steps(), reverse=True):
      try:
        self.check_compatible(config_dict, step)
        state, data = self.restore(step, abstract_state)
        return step, state, data
      except errors.UserError:
        raise
      except Exception as e:  # pylint: disable=broad-except
        moved = self._quarantine(step)
        reason = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        print(f'Checkpoint step {step} is damaged ({reason}); moved it to '
              f'{moved} and falling back to an older one.', flush=True)
    return None, None, None

  def all_steps(self) -> list[int]:
    return sorted(self.manager.all_steps())

  def saved_config(self, step: int) -> dict:
    """The config (as a dict) that the checkpoint of `step` was saved with."""
    return self._saved_config(step)

  def restore(self, step: int, abstract_state):
    """(state, data_state) of `step`, laid out as `abstract_state` says
    (ShapeDtypeStructs, with shardings where they have them)."""
    restored = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state),
        data=ocp.args.JsonRestore()))
    return restored['state'], restored['data']

  def _quarantine(self, step: int) -> str:
    """Moves a damaged step out of the manager's sight; nothing is deleted."""
    target = os.path.join(os.path.dirname(self.directory),
                          'damaged_checkpoints', str(step))
    if jax.process_index() == 0:
      os.makedirs(os.path.dirname(target), exist_ok=True)
      suffix = 0
      while os.path.exists(target + (f'.{suffix}' if suffix else '')):
        suffix += 1
      target += f'.{suffix}' if suffix else ''
      os.rename(os.path.join(self.directory, str(step)), target)
    self.manager.reload()
    return target

  def save(self, step: int, state, data_state: dict, config_dict: dict,
           force: bool = False):
    self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        data=ocp.args.JsonSave(data_state),
        config=ocp.args.JsonSave(json.loads(json.dumps(config_dict, default=list)))),
        force=force)

  def wait(self):
    self.manager.wait_until_finished()

  def close(self):
    self.manager.close()

