"""Orbax checkpoints of a run: train state, data iterator position, config.

Each step directory holds three items: `state` (params, optimizer state, step,
RNG), `data` (the Grain iterator's state) and `config` (the experiment, used to
refuse resuming a workdir with a changed experiment key: `schema.MAY_CHANGE`
lists the keys that may change, `schema.OVERRIDABLE` those --allow_changed
opens). A write that fails (a full disk) is one sentence naming the path, the
space free and the space a checkpoint needs; the last complete one is kept.
"""

import contextlib
import json
import logging
import os
import re
import sys

import jax
import orbax.checkpoint as ocp

from mmfusion import schema
from mmfusion.runtime import errors, files

# Files every complete step directory has; the JSON ones must parse.
REQUIRED_FILES = ('_CHECKPOINT_METADATA', 'config/metadata', 'data/metadata',
                  'state/_METADATA', 'state/manifest.ocdbt')
JSON_FILES = ('_CHECKPOINT_METADATA', 'config/metadata', 'data/metadata',
              'state/_METADATA')


def experiment(config_dict: dict) -> dict:
  """{key: value} of a config's experiment keys (those that may not change on
  resume), JSON-normalised so a saved config compares equal to its source."""
  flat = schema.flatten(json.loads(json.dumps(config_dict, default=list)))
  return {k: v for k, v in flat.items() if k not in schema.MAY_CHANGE}


def diagnose(step_dir: str) -> list[str]:
  """What is wrong with the files of a step directory, as short phrases
  ('state/_METADATA is missing', 'data/metadata is empty (truncated)',
  'config/metadata is not JSON (line 1 column 5)'); [] if nothing is seen."""
  found = []
  for name in REQUIRED_FILES:
    if not os.path.isfile(os.path.join(step_dir, name)):
      found.append(f'{name} is missing')
  for root, _, files in sorted(os.walk(step_dir)):
    for f in sorted(files):
      path = os.path.join(root, f)
      if os.path.getsize(path) == 0 and f != 'commit_success.txt':
        found.append(f'{os.path.relpath(path, step_dir)} is empty (truncated)')
  for name in JSON_FILES:
    path = os.path.join(step_dir, name)
    if os.path.isfile(path) and os.path.getsize(path):
      try:
        with open(path) as f:
          json.load(f)
      except (ValueError, UnicodeDecodeError) as e:
        where = getattr(e, 'lineno', None)
        found.append(f'{name} is not JSON' + (
            f' (line {where} column {e.colno})' if where else ''))
  return found


def _reason(step_dir: str, error: Exception) -> str:
  """Why a step did not read back: what `diagnose` sees in its files, else
  the first line of the error with object reprs dropped."""
  found = diagnose(step_dir)
  if found:
    more = len(found) - 2
    return '; '.join(found[:2]) + (f'; and {more} more' if more > 0 else '')
  line = (str(error).strip().splitlines() or [type(error).__name__])[0]
  line = re.sub(r'<[^<>]*(?:object|method|function)[^<>]*>', '...', line)
  return f'{type(error).__name__}: {line[:160]}'


class _OrbaxLogs(logging.Filter):
  """Drops orbax's own log lines (and asyncio's about its failed tasks):
  every failure they report reaches the run as an exception, told once."""

  def filter(self, record):
    return not ('/orbax/' in record.pathname or
                'exception was never retrieved' in record.getMessage())


for _name in ('absl', 'asyncio'):
  logging.getLogger(_name).addFilter(_OrbaxLogs())


def _unraisable(previous):
  """A hook that drops the 'Event loop is closed' errors TensorStore's
  callbacks raise when orbax's loop stopped at a failed write (the failure
  itself is raised once, as a `write_error`); other errors go on."""
  def hook(unraisable):
    if not (isinstance(unraisable.exc_value, RuntimeError)
            and str(unraisable.exc_value) == 'Event loop is closed'):
      previous(unraisable)
  return hook


sys.unraisablehook = _unraisable(sys.unraisablehook)


def _nbytes(state) -> int:
  return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(state))


class Checkpointer:
  """A CheckpointManager under `workdir/checkpoints` for one experiment."""

  def __init__(self, workdir: str, *, max_to_keep: int = 3,
               subdir: str = 'checkpoints'):
    self.directory = os.path.join(os.path.abspath(workdir), subdir)
    self._pending, self._bytes = None, 0  # the step being written, its size
    self.manager = ocp.CheckpointManager(
        self.directory,
        item_names=('state', 'data', 'config'),
        options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep,
                                             create=True))

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def _saved_config(self, step: int) -> dict:
    config = self.manager.restore(
        step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))['config']
    # Runs saved before tasks existed were classification runs.
    config.setdefault('task', {'name': 'classification'})
    return config

  def changes(self, config_dict: dict, step: int,
              allow_changed=()) -> list[tuple[str, object, object]]:
    """(key, saved, now) for each key `allow_changed` lets differ from the
    checkpoint of `step`; any other experiment key that differs is refused
    in one sentence (README, "What may change on resume")."""
    before, now = experiment(self._saved_config(step)), experiment(config_dict)
    diffs = [(k, before.get(k), now.get(k)) for k in sorted(set(before) | set(now))
             if before.get(k) != now.get(k)]
    refused = [d for d in diffs if d[0] not in allow_changed]
    if refused:
      shown = '; '.join(f'{k}: {b!r} there, {n!r} now' for k, b, n in refused[:3])
      open_ = [k for k, _, _ in refused if k in schema.OVERRIDABLE]
      hint = (f', or --allow_changed={",".join(open_)} to resume with the new '
              f'value{"s" if len(open_) > 1 else ""} (recorded in the workdir)'
              if len(open_) == len(refused) else '')
      raise errors.UserError(
          f'{self.directory} holds a checkpoint (step {step}) of a different '
          f'experiment ({shown}); pass a new --workdir, or the same config to '
          f'resume it{hint}.')
    return diffs

  def restore_latest(self, abstract_state, config_dict: dict, *,
                     allow_changed=(), start_over: bool = False):
    """(step, state, data_state, changes) of the newest checkpoint that reads
    back; `changes` are the allowed config changes (`Checkpointer.changes`).

    A damaged checkpoint (half-written, truncated, unreadable) is moved to
    `damaged_checkpoints/` beside `checkpoints/`, said so with what is wrong
    with its files, and the next older one is tried, so a run never
    crash-loops on it. When every checkpoint is damaged the run stops in one
    sentence unless `start_over`. (None, None, None, []) when there is
    nothing to resume.
    """
    steps = sorted(self.manager.all_steps(), reverse=True)
    for step in steps:
      step_dir = os.path.join(self.directory, str(step))
      try:
        changes = self.changes(config_dict, step, allow_changed)
        state, data = self.restore(step, abstract_state)
        return step, state, data, changes
      except errors.UserError:
        raise
      except Exception as e:  # pylint: disable=broad-except
        reason = _reason(step_dir, e)
        moved = self._quarantine(step)
        print(f'Checkpoint step {step} is damaged ({reason}); moved it to '
              f'{moved}.', flush=True)
    if steps and not start_over:
      raise errors.UserError(
          f'every checkpoint in {self.directory} is damaged (steps '
          f'{", ".join(map(str, sorted(steps)))}, moved to '
          f'{os.path.join(os.path.dirname(self.directory), "damaged_checkpoints")}'
          f'); pass --start_over to train again from step 0 in this workdir.')
    return None, None, None, []

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
    """Starts writing `step` (in the background); a failed write, this one's
    or the one before's, is one sentence (`write_error`)."""
    with self._writing(step, state):
      self.manager.save(step, args=ocp.args.Composite(
          state=ocp.args.StandardSave(state),
          data=ocp.args.JsonSave(data_state),
          config=ocp.args.JsonSave(
              json.loads(json.dumps(config_dict, default=list)))),
          force=force)

  def wait(self):
    with self._writing(None, None):
      self.manager.wait_until_finished()
    self._pending = None

  @contextlib.contextmanager
  def _writing(self, step, state):
    """Turns a failed checkpoint write into a `write_error` naming the step
    that failed: one still being written in the background, else `step`."""
    try:
      yield
      if state is not None:
        self._pending, self._bytes = step, _nbytes(state)
    except Exception as e:  # pylint: disable=broad-except
      if not files.is_write_error(e):
        raise
      failed = self._pending if self._pending is not None else step
      need = self._bytes or (_nbytes(state) if state is not None else 0)
      last = self.manager.latest_step()
      then = ('run the same command again to resume from '
              + (f'step {last}, the last complete checkpoint'
                 if last is not None else 'the start'))
      raise files.write_error(self.directory, e, need_bytes=need,
                              what=f'checkpoint step {failed} to ',
                              then=then) from None

  def close(self):
    self.manager.close()

