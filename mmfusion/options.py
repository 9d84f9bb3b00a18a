"""Builds a registered module from a name and options, checking both first."""

import dataclasses

import flax.linen as nn
from flax.core import frozen_dict

from mmfusion import errors

# Fields every flax Module has that a config must not set.
_INTERNAL = frozenset({'parent', 'name'})


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
          module_name: str | None = None, remat: bool = False):
  """`registry[name](**kwargs)`, or a one-sentence UserError naming the fix.

  `module_name` names the flax submodule (its key in the parameter tree);
  `remat` recomputes its activations in the backward pass (`nn.remat`),
  trading compute for memory.
  """
  if name not in registry:
    raise errors.unknown_name(kind, name, registry)
  cls = registry[name]
  known = options_of(cls)
  bad = sorted(k for k in kwargs if k not in known)
  if bad:
    noun = 'option' if len(bad) == 1 else 'options'
    raise errors.UserError(
        f'{kind} {name!r} has no {noun} {", ".join(repr(b) for b in bad)}; '
        f'its options are: {", ".join(known)}.')
  if remat:
    cls = nn.remat(cls)
  return cls(name=module_name, **{k: freeze(v) for k, v in kwargs.items()})
