"""Module options are checked by type: a wrong one fails in one sentence.

`registry.build` checks every option a config gives an encoder or a fusion
method against the field's type annotation. The cases below come from the
registries, so a new module or option is covered without editing this file.
"""

import dataclasses
import subprocess
import types
import typing

import ml_collections
import pytest

from mmfusion import encoders, fusion, models
from mmfusion.configs import av_digits, seed
from mmfusion.nn import registry
from mmfusion.runtime import errors
from tests import helpers

# kind (as build names it) -> {name: module class}, and the builder of each.
MODULES = {
    'encoder': (encoders.ENCODERS, encoders.make_encoder),
    'fusion': ({n: s.module for n, s in fusion.FUSIONS.items()},
               fusion.make_fusion),
}
REQUIRED = {'features': 8}  # what every encoder needs besides the option


def _cases():
  """(kind, module name, field) for every option of every registered module."""
  return [(kind, name, field)
          for kind, (modules, _) in MODULES.items()
          for name, cls in modules.items()
          for field in registry.option_fields(cls)]


def _annotation(kind, name, field):
  return typing.get_type_hints(MODULES[kind][0][name])[field.name]


def _takes_strings(annotation) -> bool:
  """Whether some string is a valid value: `str`, `str | None`, a Literal."""
  unions = (typing.Union, types.UnionType)
  members = (typing.get_args(annotation)
             if typing.get_origin(annotation) in unions else (annotation,))
  return any(m is str or typing.get_origin(m) is typing.Literal
             for m in members)


def _wrong_value(annotation):
  """A value of a clearly wrong type: an int where strings go, else a str."""
  return 7 if _takes_strings(annotation) else 'seven'


def _id(case):
  kind, name, field = case
  return f'{kind}-{name}-{field.name}'


CASES = _cases()
TYPED = [c for c in CASES if _annotation(*c) is not typing.Any]


def test_every_module_has_options_to_check():
  assert {name for _, name, _ in TYPED} >= set(encoders.ENCODERS)
  assert len(TYPED) > 50


@pytest.mark.parametrize('case', TYPED, ids=map(_id, TYPED))
def test_a_wrong_type_is_one_sentence_naming_the_option(case):
  kind, name, field = case
  value = _wrong_value(_annotation(*case))
  options = {**(REQUIRED if kind == 'encoder' else {}), field.name: value}
  with pytest.raises(errors.UserError) as raised:
    MODULES[kind][1](name, **options)
  message = str(raised.value)
  assert message.startswith(f'{kind} {name!r} option {field.name!r} must be ')
  assert f'not {value!r} ({type(value).__name__})' in message
  assert '\n' not in message and message.endswith('.'), message
  if field.default is not dataclasses.MISSING:
    assert f'e.g. {field.name}={field.default!r}.' in message


def test_the_message_for_a_misspelled_rank():
  with pytest.raises(errors.UserError) as raised:
    fusion.make_fusion('low_rank_tensor', rank='eight')
  assert str(raised.value) == (
      "fusion 'low_rank_tensor' option 'rank' must be an int, not 'eight' "
      "(str); e.g. rank=4.")


@pytest.mark.parametrize('case', CASES, ids=map(_id, CASES))
def test_every_default_passes_the_check(case):
  _, _, field = case
  if field.default is not dataclasses.MISSING:
    assert registry.check_value(field.default, _annotation(*case))


@pytest.mark.parametrize('value, annotation, fits', [
    (3, int, True), (True, int, False), (3.0, int, False),
    (3, float, True), (0.5, float, True), (False, float, False),
    (True, bool, True), (1, bool, False), ('a', str, True), (1, str, False),
    (None, int | None, True), (3, typing.Optional[int], True),
    ('a', int | None, False),
    ((1, 2), tuple[int, ...], True), ([1, 2], tuple[int, ...], True),
    ((), tuple[int, ...], True), ((1, 'a'), tuple[int, ...], False),
    ('12', tuple[int, ...], False), ((1, 'a'), tuple[int, str], True),
    ((1,), tuple[int, str], False), (['a'], typing.Sequence[str], True),
    ('a', typing.Sequence[str], False), ([1], list, True),
    ({'a': 1}, dict, True), (ml_collections.ConfigDict({'a': 1}),
                             typing.Mapping[str, int], True),
    ({'a': 'b'}, typing.Mapping[str, int], False), ((1,), dict, False),
    ('sincos', typing.Literal['learned', 'sincos', 'none'], True),
    ('rope', typing.Literal['learned', 'sincos', 'none'], False),
    (True, typing.Literal[1], False), (object(), typing.Any, True),
    (object(), 'an unresolved annotation', True),
    (object(), type[int], True),
])
def test_check_value(value, annotation, fits):
  assert registry.check_value(value, annotation) is fits


@pytest.mark.parametrize('annotation, words', [
    (int, 'an int'), (float, 'a float'), (int | None, 'an int or None'),
    (tuple[int, ...], 'a tuple of ints'),
    (typing.Optional[str], 'a string or None'),
    (typing.Literal['learned', 'sincos', 'none'],
     "one of 'learned', 'sincos', 'none'"),
])
def test_describe(annotation, words):
  assert registry.describe(annotation) == words


def test_frozen_and_config_dicts_show_on_one_line():
  value = ml_collections.ConfigDict({'a': {'b': 1}, 'c': [2]})
  with pytest.raises(errors.UserError,
                     match=r"not \{'a': \{'b': 1\}, 'c': \[2\]\} \(ConfigDict\)"):
    encoders.make_encoder('mlp', features=8, hidden=value)


SEED_ARGS = ('', 'synergy', 'uniqueness_image', 'redundancy_3mod', 'runlocal')
AV_DIGITS_ARGS = ('', 'clean', 'video', 'audio', 'image+text', 'audio,runlocal',
                  'variant=video,modalities=video')


@pytest.mark.parametrize('get_config, arg', [
    *[(seed.get_config, a) for a in SEED_ARGS],
    *[(av_digits.get_config, a) for a in AV_DIGITS_ARGS]])
def test_packaged_configs_build(get_config, arg):
  config = get_config(arg)
  models.check_config(config.model)
  models.from_config(config.model, num_outputs=10)


def test_main_fails_in_one_sentence_on_a_wrong_type(tmp_path, data_dir):
  result = subprocess.run(
      helpers.main_command(str(tmp_path / 'w'), data_dir,
                           '--config.model.fusion=low_rank_tensor',
                           "--config.model.fusion_kwargs={'rank': 'eight'}"),
      cwd=helpers.ROOT, env=helpers.subprocess_env(), capture_output=True,
      text=True, timeout=120)
  assert result.returncode == 2, result.stderr[-2000:]
  lines = result.stderr.splitlines()
  assert len(lines) == 1, result.stderr
  assert lines[0].startswith('mmfusion: error: ') and "'rank'" in lines[0]
