"""mmfusion: multimodal deep learning in JAX/Flax.

What a script needs, at the top level:

  import mmfusion
  config = mmfusion.get_config('seed', 'synergy,runlocal')
  mmfusion.train_and_evaluate(config, workdir)  # trains, resuming
  model = mmfusion.load(workdir)  # inference.load: predict, apply_batch
  run = mmfusion.build_run(config)  # build.run: model, optimizer, data
  sorted(mmfusion.ENCODERS), sorted(mmfusion.FUSIONS)  # the registries

Importing mmfusion imports no JAX: each name above loads its module on first
use (module `__getattr__`), so a launcher's XLA_FLAGS set before flag parsing
still apply, and a process that only reloads an export never imports the
model code.
"""

import importlib

# name -> (module, attribute): what the package exposes, imported on first use.
_LAZY = {
    'load': ('mmfusion.inference', 'load'),
    'train_and_evaluate': ('mmfusion.train', 'train_and_evaluate'),
    'build_run': ('mmfusion.build', 'run'),
    'ENCODERS': ('mmfusion.encoders', 'ENCODERS'),
    'FUSIONS': ('mmfusion.fusion', 'FUSIONS'),
}

__all__ = ['ENCODERS', 'FUSIONS', 'build_run', 'get_config', 'load',
           'train_and_evaluate']


def get_config(name: str, arg: str = ''):
  """The packaged config `mmfusion/configs/<name>.py` for `arg` (its
  `get_config(arg)`, e.g. get_config('av_digits', 'audio,runlocal'))."""
  from mmfusion import configs  # pylint: disable=g-import-not-at-top
  known = configs.names()
  name = name.removesuffix('.py')
  if name not in known:
    from mmfusion.runtime import errors  # pylint: disable=g-import-not-at-top
    raise errors.unknown_name('config', name, known)
  return importlib.import_module(f'mmfusion.configs.{name}').get_config(arg)


def __getattr__(name):
  if name in _LAZY:
    module, attribute = _LAZY[name]
    value = getattr(importlib.import_module(module), attribute)
    globals()[name] = value
    return value
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')


def __dir__():
  return sorted(set(globals()) | set(__all__))

