"""Builds a registered module from a name and options, checking both first.

An option's value is checked against its field's type annotation
(`check_value`), so a wrong-typed config value fails in one sentence instead
of deep inside the module's shape code.
"""

import collections.abc
import dataclasses
import numbers
import types
import typing

from flax.core import frozen_dict
import numpy as np

from mmfusion.runtime import errors

# Fields every flax Module has that a config must not set.
_INTERNAL = frozenset({'parent', 'name'})
# What the model hands every module that declares the field (model.dtype,
# model.kernels); a module's own options must not set them.
CONTEXT = ('dtype', 'kernels')

_UNIONS = (typing.Union, types.UnionType)
_SEQUENCES = (tuple, list, collections.abc.Sequence)
_MAPPINGS = (dict, collections.abc.Mapping)
# Plain types: (as the object of "must be", in the plural).
_SCALARS = {bool: ('a bool', 'bools'), int: ('an int', 'ints'),
            float: ('a float', 'floats'), str: ('a string', 'strings'),
            type(None): ('None', 'Nones')}
_SHOWN_CHARS = 60  # longest value an error message repeats in full


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


def _parts(annotation):
  """(origin, args) of `annotation`: `tuple[int, ...]` -> (tuple, (int, ...)),
  `int` -> (int, ()), `None` -> (NoneType, ())."""
  if annotation is None:
    return type(None), ()
  return (typing.get_origin(annotation) or annotation,
          typing.get_args(annotation))


def _is_mapping(value) -> bool:
  """Dicts, FrozenDicts and ConfigDicts: what `freeze` makes a FrozenDict."""
  return hasattr(value, 'items')


def _fits_scalar(value, cls) -> bool:
  """`value` is a `cls` (int, float, bool, str or NoneType); a bool is not a
  number, an int is a float."""
  is_bool = isinstance(value, (bool, np.bool_))
  if cls is bool or is_bool:
    return cls is bool and is_bool
  if cls is int:
    return isinstance(value, numbers.Integral)
  if cls is float:
    return isinstance(value, numbers.Real)
  if cls is str:
    return isinstance(value, str)
  return value is None


def _fits_items(items, origin, args) -> bool:
  """The items of a list or tuple fit `origin[args]`: each one `X` for
  `tuple[X, ...]` and `Sequence[X]`, one per position for `tuple[X, Y]`."""
  if not args:
    return True
  if origin is tuple and args[-1] is not Ellipsis:
    return len(items) == len(args) and all(map(check_value, items, args))
  return all(check_value(item, args[0]) for item in items)


def _fits_entries(mapping, args) -> bool:
  """The keys and values of a mapping fit `Mapping[K, V]`'s (K, V)."""
  if not args:
    return True
  key, value = args
  return all(check_value(k, key) and check_value(v, value)
             for k, v in mapping.items())


def check_value(value, annotation) -> bool:
  """Whether a config value fits a field's type annotation.

  Lists and tuples both fit tuple, list and Sequence annotations, and dicts,
  FrozenDicts and ConfigDicts fit dict and Mapping ones. An annotation this
  does not understand (`Any`, a class, a string) accepts every value.
  """
  origin, args = _parts(annotation)
  if origin in _UNIONS:
    return any(check_value(value, a) for a in args)
  if origin is typing.Literal:
    return any(type(value) is type(a) and value == a for a in args)
  if origin in _SCALARS:
    return _fits_scalar(value, origin)
  if origin in _SEQUENCES:
    return (isinstance(value, (list, tuple)) and
            _fits_items(value, origin, args))
  if origin in _MAPPINGS:
    return _is_mapping(value) and _fits_entries(value, args)
  return True


def _either(words: list[str]) -> str:
  """['an int', 'a string', 'None'] -> 'an int, a string or None'."""
  if len(words) == 1:
    return words[0]
  return f'{", ".join(words[:-1])} or {words[-1]}'


def _plural(annotation) -> str:
  """What many values of `annotation` are called: 'ints', 'strings'..."""
  origin, _ = _parts(annotation)
  if origin in _SCALARS:
    return _SCALARS[origin][1]
  if annotation is typing.Any:
    return 'values'
  return f'items that are each {describe(annotation)}'


def describe(annotation) -> str:
  """An annotation in plain words, as the object of "must be": 'an int',
  'a tuple of ints', 'an int or None', "one of 'learned', 'sincos', 'none'"."""
  origin, args = _parts(annotation)
  if origin in _UNIONS:
    last = sorted(args, key=lambda a: a is type(None))  # None goes last
    return _either([describe(a) for a in last])
  if origin is typing.Literal:
    return 'one of ' + ', '.join(repr(a) for a in args)
  if origin in _SCALARS:
    return _SCALARS[origin][0]
  if origin in _SEQUENCES:
    noun = 'a tuple' if origin is tuple else 'a list'
    if not args:
      return noun
    if origin is tuple and args[-1] is not Ellipsis:
      return f'{noun} ({", ".join(describe(a) for a in args)})'
    return f'{noun} of {_plural(args[0])}'
  if origin in _MAPPINGS:
    return (f'a dict from {_plural(args[0])} to {_plural(args[1])}' if args
            else 'a dict')
  if annotation is typing.Any:
    return 'any value'
  return f'a {getattr(annotation, "__name__", annotation)}'


def _plain(value):
  """`value` with its mappings (FrozenDicts, ConfigDicts) as plain dicts,
  which print on one line."""
  if isinstance(value, (list, tuple)):
    return type(value)(_plain(v) for v in value)
  if _is_mapping(value):
    return {k: _plain(v) for k, v in value.items()}
  return value


def _shown(value) -> str:
  """`repr(value)` on one line, cut to `_SHOWN_CHARS` characters."""
  text = repr(_plain(value))
  if '\n' in text:  # e.g. a numpy array
    text = ' '.join(text.split())
  if len(text) > _SHOWN_CHARS:
    text = text[:_SHOWN_CHARS - 3] + '...'
  return text


def option_fields(cls) -> list[dataclasses.Field]:
  """The fields of `cls` that a config sets: its options but the CONTEXT."""
  return [f for f in dataclasses.fields(cls)
          if f.init and f.name not in _INTERNAL and f.name not in CONTEXT]


def _annotations(cls) -> dict:
  """Field name -> type annotation: `typing.get_type_hints`, or the raw
  dataclass annotations where those do not resolve."""
  try:
    return typing.get_type_hints(cls)
  except (NameError, TypeError, AttributeError):
    return {f.name: f.type for f in dataclasses.fields(cls)}


def _wrong_type(kind: str, name: str, field: dataclasses.Field, annotation,
                value) -> errors.UserError:
  """The one-sentence error for an option whose value has the wrong type,
  with the field's default as an example when it has one."""
  example = ('' if field.default is dataclasses.MISSING else
             f'; e.g. {field.name}={_shown(field.default)}')
  return errors.UserError(
      f'{kind} {name!r} option {field.name!r} must be {describe(annotation)}, '
      f'not {_shown(value)} ({type(value).__name__}){example}.')


def check_types(kind: str, name: str, cls, kwargs: dict):
  """Fails in one sentence on the first option of `kwargs` (in field order)
  whose value does not fit its field's annotation; CONTEXT is not checked."""
  annotations = _annotations(cls)
  for field in option_fields(cls):
    annotation = annotations.get(field.name, field.type)
    if field.name in kwargs and not check_value(kwargs[field.name],
                                                annotation):
      raise _wrong_type(kind, name, field, annotation, kwargs[field.name])


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
        f'its options are: {", ".join(k for k in known if k not in CONTEXT)}.')
  check_types(kind, name, cls, kwargs)
  return cls(name=module_name, **{k: freeze(v) for k, v in kwargs.items()})


def check_options(where: str, options: dict):
  """A config's options for one module must leave the model's CONTEXT alone."""
  given = sorted(k for k in options if k in CONTEXT)
  if given:
    raise errors.UserError(
        f'{where} sets {", ".join(given)}, which the model hands every '
        f'module; set {" and ".join(f"model.{k}" for k in given)} instead.')
