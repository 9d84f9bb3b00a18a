"""Builds a registered module from a name and options, checking both first."""

import dataclasses

from flax.core import frozen_dict

from mmfusion.runtime import errors

# Fields every flax Module has that a config must not set.
_INTERNAL = frozenset({'parent', 'name'})
# What the model hands every module that declares the field (model.dtype,
# model.kernels); a module's own options must not set them.
CONTEXT = ('dtype', 'kernels')


def options_of(cls) -> list[str]:
  """The config options (dataclass fields) a module class accepts."""
  return [f.name for f in dataclasses.fields(cls)
          if f.init and f.name not in _INTERNAL]


def freeze(value):
  """Config values as hashable ones (flax hashes modules under jit): lists
  become tuples and dicts (ConfigDicts too) become FrozenDicts."""
  if isinstance(value, (list, tuple)):
    return tuple(freeze(v) for v in value)
  if hasattr(value, 'items'):
    return frozen_dict.FrozenDict({k: freeze(v) for k, v in value.items()})
  return value


def build(kind: str, name: str, registry: dict, kwargs: dict,
          module_name: str | None = None):
  """`registry[name](**kwargs)`, or a one-sentence UserError naming the fix.

  `module_name` names the flax submodule (its key in the parameter tree).
  The model's `CONTEXT` keys in `kwargs` go only to classes that declare them
  (a GRU has no use for kernels).
  """
  if name not in registry:
    raise errors.unknown_name(kind, name, registry)
  cls = registry[name]
  known = options_of(cls)
  kwargs = {k: v for k, v in kwargs.items() if k in known or k not in CONTEXT}
  bad = sorted(k for k in kwargs if k not in known)
  if bad:
    noun = 'option' if len(bad) == 1 else 'options'
    raise errors.UserError(
        f'{kind} {name!r} has no {noun} {", ".join(repr(b) for b in bad)}; '
        f'its options are: {", ".join(known)}.')
  return cls(name=module_name, **{k: freeze(v) for k, v in kwargs.items()})


def check_options(where: str, options: dict):
  """A config's options for one module must leave the model's CONTEXT alone."""
  given = sorted(k for k in options if k in CONTEXT)
  if given:
    raise errors.UserError(
        f'{where} sets {", ".join(given)}, which the model hands every '
        f'module; set {" and ".join(f"model.{k}" for k in given)} instead.')
