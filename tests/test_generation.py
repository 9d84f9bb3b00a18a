"""The `generation` task: fusion tokens as a decoder's memory, teacher
forcing, decoding inside the model, and its checks. End-to-end runs on
av_digits/captions and av_digits/qa are in tests/test_generation_runs.py."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from mmfusion import fusion as fusion_lib
from mmfusion import tasks
from mmfusion.configs import av_generation
from mmfusion.data import info as info_lib
from mmfusion.runtime import errors
from mmfusion.tasks import generation

B = 3
BYTES = {'tokenizer': 'bytes'}


def _data(prompt: int = 2, caption: int = 6):
  targets = {'caption': {'length': caption, 'tokenizer': BYTES}}
  if prompt:
    targets['prompt'] = {'length': prompt, 'tokenizer': BYTES}
  return info_lib.DataInfo(
      name='toy', modalities=('audio', 'video'), classes=(),
      inputs={'audio': ((4000,), 'float32'), 'video': ((3, 16, 16, 1), 'uint8')},
      preprocessing={'audio': {'sample_rate': 16000}, 'video': {}},
      targets=targets)


def _model_config(fusion: str):
  config = av_generation.get_config('captions')
  config.model.fusion = fusion
  for options in config.model.encoders.values():
    options['features'] = 16
  config.model.encoders.audio.channels = (4, 8)
  config.model.encoders.video.frame_options = {'channels': (4,), 'pool': True}
  return config.model


def _task(data=None, **options):
  options = {'name': 'generation', 'width': 16, **options}
  return tasks.bind(tasks.make(ml_collections.ConfigDict(options)),
                    data or _data())


def _batch(seed: int = 0):
  rng = np.random.default_rng(seed)
  return {
      'audio': rng.normal(size=(B, 4000)).astype(np.float32),
      'video': rng.integers(0, 255, (B, 3, 16, 16, 1)).astype(np.uint8),
      'caption': np.array([[104, 105, 0, 0, 0, 0], [97, 0, 0, 0, 0, 0],
                           [98, 99, 100, 101, 102, 103]], np.int32),
      'prompt': np.array([[60, 0], [61, 62], [0, 0]], np.int32),
      'present/audio': np.array([True, True, False]),
      'present/video': np.ones(B, bool)}


def test_teacher_forcing_squeezes_padding_and_weighs_only_the_caption():
  prompt = jnp.array([[7, 0], [0, 0]])
  caption = jnp.array([[5, 6, 0], [9, 0, 0]])
  inputs, labels, weights = generation.teacher_forcing(prompt, caption,
                                                       bos_id=10, eos_id=11)
  # row 0: BOS 7 5 6 EOS; row 1: BOS 9 EOS
  np.testing.assert_array_equal(inputs, [[10, 7, 5, 6, 0, 0],
                                         [10, 9, 0, 0, 0, 0]])
  np.testing.assert_array_equal(labels, [[7, 5, 6, 11, 0, 0],
                                         [9, 11, 0, 0, 0, 0]])
  np.testing.assert_array_equal(weights, [[0, 1, 1, 1, 0, 0],
                                          [1, 1, 0, 0, 0, 0]])
  np.testing.assert_array_equal(
      generation.start_of(prompt, 10, 2), [[10, 7, 0], [10, 0, 0]])


@pytest.mark.parametrize('fusion', ['concat', 'cross_attention', 'bottleneck',
                                    'perceiver'])
def test_token_fusions_give_masked_tokens(fusion):
  rng = np.random.default_rng(0)
  tokens = {'a': jnp.asarray(rng.normal(size=(B, 4, 6)), jnp.float32),
            'b': jnp.asarray(rng.normal(size=(B, 3, 8)), jnp.float32)}
  masks = {'a': jnp.array([[1, 1, 0, 0]] * B, bool),
           'b': jnp.ones((B, 3), bool)}
  present = {'a': jnp.array([True, False, True]), 'b': jnp.ones(B, bool)}
  module = fusion_lib.make_fusion(fusion, output='tokens', features=8)
  variables = module.init(jax.random.key(0), tokens, masks, present)
  memory, valid = module.apply(variables, tokens, masks, present)
  assert memory.ndim == 3 and memory.shape[0] == B and memory.shape[2] == 8
  assert valid.shape == memory.shape[:2] and valid.dtype == jnp.bool_
  assert np.isfinite(np.asarray(memory)).all()
  if fusion in ('concat', 'bottleneck'):  # a's padding and absence masked
    np.testing.assert_array_equal(valid[:, :4], [[1, 1, 0, 0], [0, 0, 0, 0],
                                                 [1, 1, 0, 0]])
  pooled = fusion_lib.make_fusion(fusion, features=8)
  out = pooled.apply(pooled.init(jax.random.key(0), tokens, masks, present),
                     tokens, masks, present)
  assert out.shape[0] == B and out.ndim == 2


@pytest.mark.parametrize('fusion,memory,conditioning', [
    ('concat', 'tokens', 'prefix'),
    ('cross_attention', 'tokens', 'cross_attention'),
    ('bottleneck', 'tokens', 'prefix'),
    ('gated', 'pooled', 'cross_attention'),
])
def test_the_model_decodes_what_its_teacher_forced_logits_say(
    fusion, memory, conditioning):
  """Greedy decoding inside the model writes, at each step, the argmax of
  the teacher-forced logits of what it wrote so far; a batch without the
  caption (predict) decodes the same."""
  task = _task(memory=memory, conditioning=conditioning)
  task.check_fusion(fusion, 'intermediate')
  model = task.model(_model_config(fusion))
  batch = _batch()
  params = model.init(jax.random.key(0), batch)['params']
  apply = jax.jit(lambda p, b: model.apply({'params': p}, b)[0])
  out = apply(params, batch)
  tokens, start = np.asarray(out['tokens']), np.asarray(out['start'])
  np.testing.assert_array_equal(start, [2, 3, 1])
  assert tokens.shape == (B, task.length()) == (B, 1 + 2 + 6 + 1)
  written = [t[s:] for t, s in zip(tokens, start)]
  caption = np.zeros((B, 6), np.int32)  # what it wrote, fed back
  compared = []
  for i, w in enumerate(written):
    k = min(len(w), 6)
    eos = np.flatnonzero(w[:k] == task.eos_id)
    k = eos[0] + 1 if eos.size else k  # up to and with EOS
    caption[i, :k - bool(eos.size)] = w[:k - bool(eos.size)]
    compared.append(k)
  forced = np.array(apply(params, {**batch, 'caption': caption})['logits'])
  forced[..., 0] = -np.inf  # padding is never generated
  for i, (w, k) in enumerate(zip(written, compared)):
    s = start[i] - 1  # the logits at s predict the first written token
    np.testing.assert_array_equal(forced[i, s:s + k].argmax(-1), w[:k])
  without = {k: v for k, v in batch.items() if k != 'caption'}
  np.testing.assert_array_equal(apply(params, without)['tokens'], tokens)
  loss, metrics = task.loss(model.apply({'params': params}, batch,
                                        train=True)[0], batch)
  assert np.isfinite(float(loss)) and 0 <= metrics['next_token_accuracy'] <= 1


def test_scores_and_rows_read_the_text_after_the_prompt():
  task = _task()
  v = task.bos_id
  tokens = np.array([[v, 60, 104, 105, task.eos_id, 0],   # "<" then "hi"
                     [v, 97, 98, task.eos_id, 99, 0]])  # cut at EOS
  gathered = {'tokens': tokens, 'start': np.array([2, 1]),
              'loss': np.array([1.0, 3.0])}
  caption = np.array([[104, 105, 0], [97, 99, 0]])
  assert task.texts(tokens, gathered['start']) == ['hi', 'ab']
  scores = task.scores(gathered, {'caption': caption})
  assert scores['exact_match'] == 0.5 and scores['loss'] == 2.0
  assert scores['examples'] == 2
  assert task.rows(gathered, ['x', 'y']) == [
      {'id': 'x', 'prediction': 'hi'}, {'id': 'y', 'prediction': 'ab'}]


@pytest.mark.parametrize('options,data,fusion,stage,message', [
    ({}, info_lib.DataInfo('seed', ('x',), ('a', 'b'), {}, {},
                           {'label': {'names': ['a', 'b']}}),
     'concat', 'intermediate', 'has no `caption`'),
    ({'max_length': 3}, None, 'concat', 'intermediate', 'not longer than BOS'),
    ({'beam_size': 0}, None, 'concat', 'intermediate', 'beam_size=0'),
    ({'search': 'nope'}, None, 'concat', 'intermediate', "unknown task.search"),
    ({}, None, 'late_logits', 'late', 'per-modality predictions'),
    ({}, None, 'gated', 'intermediate', "task.memory='pooled'"),
])
def test_bad_options_fail_in_one_sentence(options, data, fusion, stage,
                                          message):
  with pytest.raises(errors.UserError, match=message.replace('(', r'\(')):
    _task(data, **options).check_fusion(fusion, stage)
