"""Every config key the loop reads, with its type and range, checked once.

`check(config)` runs before anything is built or written: a value of the wrong
type or outside its range is one sentence naming the key, what it must be and
the value given. A key in the config that nothing reads is refused too (a
misspelt key would otherwise be dropped silently). What depends on more than
one key (batch over devices, accumulation, vmap values) or on the data (batch
over the training split) is checked where both are known: `build.run`.
"""

import dataclasses
import numbers
import os
from typing import Any, Callable

from mmfusion.runtime import errors

# A check returns None for a good value, else what the value must be.
Check = Callable[[Any], str | None]


def _is_int(v) -> bool:
  return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_number(v) -> bool:
  return isinstance(v, numbers.Real) and not isinstance(v, bool)


def _range(low, high, low_open, high_open) -> str:
  parts = []
  if low is not None:
    parts.append(f'{">" if low_open else ">="} {low}')
  if high is not None:
    parts.append(f'{"<" if high_open else "<="} {high}')
  return ' and '.join(parts)


def integer(low: int | None = None, high: int | None = None) -> Check:
  def check(v):
    if (not _is_int(v) or (low is not None and v < low)
        or (high is not None and v > high)):
      return f'a whole number {_range(low, high, False, False)}'.rstrip()
    return None
  return check


def number(low=None, high=None, *, low_open=False, high_open=False) -> Check:
  def check(v):
    bad = not _is_number(v) or v != v  # NaN
    if not bad and low is not None:
      bad = v <= low if low_open else v < low
    if not bad and high is not None:
      bad = v >= high if high_open else v > high
    return f'a number {_range(low, high, low_open, high_open)}'.rstrip() if bad else None
  return check


def boolean(v):
  return None if isinstance(v, bool) else 'True or False'


def text(v):
  return None if isinstance(v, str) and v else 'a non-empty string'


def choice(*options) -> Check:
  def check(v):
    return None if v in options else 'one of ' + ', '.join(map(repr, options))
  return check


def sequence(item: Check, what: str, *, nonempty=False, unique=False) -> Check:
  """A list or tuple whose every item passes `item`."""
  def check(v):
    if (isinstance(v, (str, bytes)) or not isinstance(v, (list, tuple))
        or any(item(x) for x in v) or (nonempty and not v)
        or (unique and len(set(v)) != len(v))):
      return (f'a {"non-empty " if nonempty else ""}list of '
              f'{"distinct " if unique else ""}{what}')
    return None
  return check


def mapping(value: Check | None = None, what: str = '') -> Check:
  """A dict (or ConfigDict) with string keys, values passing `value`."""
  def check(v):
    if (not hasattr(v, 'items') or any(not isinstance(k, str) for k in v)
        or (value and any(value(x) for x in v.values()))):
      return f'a dict{" of " + what if what else ""}'
    return None
  return check


def module(v):
  """A registered module's options: `{'name': ..., option: value, ...}`."""
  if not hasattr(v, 'items') or text(v.get('name')):
    return "a dict with a 'name' (e.g. {'name': 'mlp', 'features': 64})"
  return None


def data_dir(v):
  if v is None:
    return None
  if not isinstance(v, str) or not v:
    return 'a directory path, or None (the TFDS default)'
  if os.path.exists(v) and not os.path.isdir(v):
    return 'a directory, not a file'
  return None


PROBABILITY = number(0.0, 1.0)
POSITIVE = integer(1)

# The experiment: the loop reads every key here and nothing else.
KEYS: dict[str, Check] = {
    'seed': integer(0, 2**31 - 1),
    'batch_size': POSITIVE,
    'total_steps': POSITIVE,
    'eval_every': POSITIVE,
    'checkpoint_every': POSITIVE,
    'log_every': POSITIVE,
    'num_devices': integer(0),
    'fsdp': boolean,
    'fsdp_min_size': integer(0),
    'grad_accum_steps': POSITIVE,
    'keep_checkpoints': POSITIVE,
    'task': module,
    'best_metric': text,  # one the task reports (build.check_best)
    'best_mode': choice('max', 'min'),
    'vmap.size': POSITIVE,
    'vmap.key': choice('seed', 'optimizer.learning_rate'),
    'vmap.values': sequence(number(0.0, low_open=True), 'positive numbers'),
    'data.name': text,
    'data.modalities': sequence(text, 'modality names', nonempty=True,
                                unique=True),
    'data.data_dir': data_dir,
    'data.overrides': mapping(),
    'data.modality_dropout': mapping(PROBABILITY, 'probabilities in [0, 1]'),
    'data.extra_eval_splits': sequence(text, 'split names'),
    'data.augment': mapping(),  # speech augmentation (data/augment.py)
    'model.fusion': text,
    'model.fusion_kwargs': mapping(),
    'model.encoders': mapping(module, 'encoder options by modality'),
    'model.early_encoder': module,
    'model.head_hidden': sequence(POSITIVE, 'positive whole numbers'),
    'model.dtype': choice('float32', 'bfloat16', 'float16'),
    'model.remat': boolean,
    'model.kernels': choice('auto', 'flax', 'xla_cpu'),
    'optimizer.name': choice('adamw'),
    'optimizer.learning_rate': number(0.0, low_open=True),
    'optimizer.warmup_steps': integer(0),
    'optimizer.final_lr_fraction': PROBABILITY,
    'optimizer.b1': number(0.0, 1.0, high_open=True),
    'optimizer.b2': number(0.0, 1.0, high_open=True),
    'optimizer.weight_decay': number(0.0),
    'optimizer.grad_clip_norm': number(0.0),
}
# What may change when a run resumes: when and how much it trains, logs and
# keeps, where the data lives, and how the computation is laid out (devices,
# FSDP, accumulation, remat, kernels), none of which changes the result but
# for float rounding. Every other key defines the experiment: a resume with a
# changed value is refused. `total_steps` sets the cosine schedule's length,
# so a longer run decays over the new total from the resumed step on.
MAY_CHANGE = frozenset({
    'total_steps', 'eval_every', 'checkpoint_every', 'log_every',
    'keep_checkpoints', 'num_devices', 'fsdp', 'fsdp_min_size',
    'grad_accum_steps', 'data.data_dir', 'data.extra_eval_splits',
    'model.remat', 'model.kernels'})
# Experiment keys that `--allow_changed=KEY,...` lets a resume change (the
# change is recorded in the workdir); the others fix the parameters' shapes,
# the data or the randomness.
OVERRIDABLE = frozenset({
    'batch_size', 'data.modality_dropout', 'optimizer.learning_rate',
    'optimizer.warmup_steps', 'optimizer.final_lr_fraction', 'optimizer.b1',
    'optimizer.b2', 'optimizer.weight_decay', 'optimizer.grad_clip_norm'})
# Dict-valued keys whose contents are checked by their own owners (a
# module's options by the registry, data overrides by the builder).
_OPAQUE = ('data.overrides', 'data.modality_dropout', 'data.augment', 'model.fusion_kwargs',
           'model.encoders', 'model.early_encoder', 'task')


UNKNOWN = 'absent'  # what a key nothing reads must be


@dataclasses.dataclass(frozen=True)
class Problem:
  key: str
  value: Any
  must_be: str

  def sentence(self) -> str:
    if self.must_be == UNKNOWN:
      return (f'the config has a key {self.key} that nothing reads (a '
              f'misspelt key?); remove it or fix its name in the config file.')
    plain = self.value.to_dict() if hasattr(self.value, 'to_dict') else self.value
    shown = ' '.join(repr(plain).split())  # one line, whatever the value
    shown = shown if len(shown) <= 60 else shown[:57] + '...'
    return (f'config key {self.key}={shown} must be {self.must_be}; fix '
            f'--config.{self.key} or the config file.')


def flatten(config, prefix: str = '') -> dict:
  """{dotted key: value}, stopping at `KEYS` and the dicts in `_OPAQUE`."""
  out = {}
  for k, v in config.items():
    key = prefix + str(k)
    if hasattr(v, 'items') and key not in KEYS and key not in _OPAQUE:
      out.update(flatten(v, key + '.'))
    else:
      out[key] = v
  return out


def problems(config) -> list[Problem]:
  """What is wrong with `config`'s keys, in `KEYS` order, then unknown keys."""
  flat = flatten(config)
  out = [Problem(k, flat.get(k), check(flat[k]) if k in flat else 'set')
         for k, check in KEYS.items() if k not in flat or check(flat[k])]
  return out + [Problem(k, v, UNKNOWN) for k, v in flat.items()
                if k not in KEYS]


def check(config):
  """Fails in one sentence on the first bad key of `config`."""
  found = problems(config)
  missing = [p.key for p in found if p.must_be == 'set']
  if missing:
    raise errors.UserError(
        f'the config has no {", ".join(missing[:6])}'
        f'{" ..." if len(missing) > 6 else ""}; start from '
        f'mmfusion/configs/seed.py, whose run options come from '
        f'mmfusion/configs/common.py.')
  if found:
    raise errors.UserError(found[0].sentence())
