"""The Flax Whisper encoder against transformers: the log-mel front end vs
WhisperFeatureExtractor, the encoder vs WhisperEncoder on a tiny random
checkpoint, the whole wave -> tokens path; bad checkpoints fail in one
sentence."""

import os

os.environ['HF_HUB_OFFLINE'] = '1'  # before transformers: nothing downloads

import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors import numpy as safetensors_np
import torch
import transformers
from transformers.models.whisper import modeling_whisper

from mmfusion.encoders import whisper as whisper_lib
from mmfusion.nn import kernels as kernels_lib
from mmfusion.pretrained import whisper
from mmfusion.runtime import errors

# The reference frameworks (PyTorch, transformers, onnxruntime) and full-size
# pretrained models: the slow tier (make test-slow, run by CI).
pytestmark = pytest.mark.slow

S = 16_000  # 1 s at 16 kHz: 50 tokens
# Real checkpoints hold 1,500 positions (30 s); 100 (2 s) keeps the tests
# fast, and 2 s plays the part of 30 s (`FULL`): the length HF pads to.
TINY = dict(d_model=32, encoder_layers=2, encoder_attention_heads=4,
            encoder_ffn_dim=64, decoder_layers=1, decoder_attention_heads=4,
            decoder_ffn_dim=64, num_mel_bins=80, max_source_positions=100)
FULL = dict(max_seconds=2.0)  # the tiny table's whole length


@pytest.fixture(scope='module')
def waves_BxS():
  """[2, S] float32: white noise and a 440 Hz sine over quiet noise."""
  rng = np.random.default_rng(0)
  t_S = np.arange(S) / whisper_lib.SAMPLE_RATE
  return np.stack([rng.normal(0, 0.3, S).clip(-1, 1),
                   0.5 * np.sin(2 * np.pi * 440 * t_S) +
                   rng.normal(0, 0.01, S)]).astype(np.float32)


def _extract(waves_BxS, samples=2 * S, n_mels=80):
  """WhisperFeatureExtractor's [B, N, M] features of waves padded to
  `samples` (default: the tiny table's 2 s; None: 30 s, its own default)."""
  extractor = transformers.WhisperFeatureExtractor(feature_size=n_mels)
  kw = {} if samples is None else {'max_length': samples}
  return extractor(list(waves_BxS), sampling_rate=16_000, return_tensors='np',
                   **kw)['input_features'].transpose(0, 2, 1)


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
  """(folder, PyTorch encoder) of a tiny random `WhisperModel` whose weights
  are moved off their init (LayerNorms, positions)."""
  torch.manual_seed(0)
  model = transformers.WhisperModel(transformers.WhisperConfig(**TINY))
  with torch.no_grad():
    for p in model.parameters():
      p.add_(0.2 * torch.randn_like(p))
  path = tmp_path_factory.mktemp('tiny_whisper')
  model.eval().save_pretrained(path)
  return str(path), model.encoder


@pytest.fixture(scope='module')
def params(tiny):
  """The tiny checkpoint's `WhisperEncoder` parameters (no proj)."""
  model = whisper_lib.WhisperEncoder(32, **whisper.options(tiny[0]), **FULL)
  return whisper.load(tiny[0], _template(model))


def _template(model, length=S):
  return jax.eval_shape(model.init, jax.random.key(0),
                        jnp.zeros((1, length)))['params']


def _torch(encoder, features_BxNxM):
  with torch.no_grad():
    return encoder(torch.tensor(features_BxNxM.transpose(0, 2, 1))
                   ).last_hidden_state.numpy()


def _copy(tiny, tmp_path):
  return shutil.copytree(tiny[0], tmp_path / 'copy')


def test_front_end_matches_feature_extractor(waves_BxS):
  jitted = jax.jit(whisper_lib.log_mel_spectrogram, static_argnums=1)
  for samples, n_mels in ((None, 80), (S, 128)):  # 30 s; the own length
    got = jitted(whisper_lib.fit(waves_BxS, samples or 480_000), n_mels)
    want = _extract(waves_BxS, samples, n_mels)
    assert got.shape == want.shape == (2, (samples or 480_000) // 160, n_mels)
    diff = np.abs(np.asarray(got) - want).max()
    print(f'front end {samples} samples, {n_mels} mels: max abs diff '
          f'{diff:.2e}')
    assert diff < 1e-4, diff


def test_encoder_matches_pytorch_on_extractor_features(tiny, params,
                                                        waves_BxS):
  opts = whisper.options(tiny[0])
  features_BxNxM = _extract(waves_BxS)
  encoder = whisper_lib.LogMelEncoder(
      opts['d_model'], opts['num_layers'], opts['num_heads'], opts['mlp_dim'],
      opts['max_source_positions'])
  got = jax.jit(encoder.apply)({'params': params['encoder']}, features_BxNxM)
  want = _torch(tiny[1], features_BxNxM)
  diff = np.abs(np.asarray(got) - want).max()
  print(f'encoder max abs diff: {diff:.2e} (states up to '
        f'{np.abs(want).max():.1f})')
  assert got.shape == (2, 100, 32) and diff < 1e-4, diff


def test_wave_to_tokens_matches_pytorch_with_a_projection(tiny, params,
                                                          waves_BxS):
  model = whisper_lib.WhisperEncoder(16, **whisper.options(tiny[0]), **FULL)
  rng = np.random.default_rng(1)
  proj = {'kernel': rng.normal(size=(32, 16)).astype(np.float32),
          'bias': rng.normal(size=16).astype(np.float32)}
  loaded = whisper.load(tiny[0], _template(model) | {'proj': proj})
  np.testing.assert_array_equal(loaded['proj']['kernel'], proj['kernel'])
  tokens_BxTxD, mask_BxT = jax.jit(model.apply)({'params': loaded}, waves_BxS)
  want = _torch(tiny[1], _extract(waves_BxS)) @ proj['kernel'] + proj['bias']
  diff = np.abs(np.asarray(tokens_BxTxD) - want).max()
  print(f'wave -> tokens max abs diff: {diff:.2e}')
  assert tokens_BxTxD.shape == (2, 100, 16) and diff < 1e-4, diff
  np.testing.assert_array_equal(mask_BxT, np.tile(np.arange(100) < 50, (2, 1)))


def test_short_clips_use_the_first_positions(tiny, params, waves_BxS):
  """max_seconds=None: 1 s -> 50 tokens, as Hugging Face's encoder with the
  first 50 rows of the position table would give."""
  config = transformers.WhisperConfig(**TINY | {'max_source_positions': 50})
  short = modeling_whisper.WhisperEncoder(config).eval()
  state = tiny[1].state_dict()
  state['embed_positions.weight'] = state['embed_positions.weight'][:50]
  short.load_state_dict(state)
  model = whisper_lib.WhisperEncoder(32, **whisper.options(tiny[0]),
                                     max_seconds=None)
  tokens_BxTxD, mask_BxT = jax.jit(model.apply)({'params': params}, waves_BxS)
  want = _torch(short, _extract(waves_BxS, S))
  diff = np.abs(np.asarray(tokens_BxTxD) - want).max()
  print(f'1 s on 50 positions max abs diff: {diff:.2e}')
  assert diff < 1e-4 and mask_BxT.shape == (2, 50) and mask_BxT.all(), diff
  too_long = model.clone(max_seconds=2.5)
  with pytest.raises(errors.UserError, match='125 positions.*has 100'):
    jax.eval_shape(too_long.apply, {'params': params}, waves_BxS)
  tiny_sizes = jax.eval_shape(  # whisper-tiny's defaults: 30 s, 1,500 tokens
      whisper_lib.WhisperEncoder(384).init_with_output, jax.random.key(0),
      waves_BxS)[0]
  assert tiny_sizes[0].shape == (2, 1500, 384) and tiny_sizes[1].shape == (
      2, 1500)


def test_bfloat16_and_xla_cpu_kernels(tiny, params, waves_BxS):
  """One layer on 0.5 s (the 1 s waves cut to 25 tokens), one program
  (forward mode and second derivatives: tests/test_kernels.py's sweep)."""
  model = whisper_lib.WhisperEncoder(
      32, **whisper.options(tiny[0]) | {'num_layers': 1}, max_seconds=0.5)
  p = params | {'encoder': {k: v for k, v in params['encoder'].items()
                            if k != 'layer_1'}}

  @jax.jit
  def run():
    half = model.clone(dtype=jnp.bfloat16).apply({'params': p}, waves_BxS)
    cpu = model.clone(kernels=kernels_lib.XLA_CPU).apply({'params': p},
                                                         waves_BxS)[0]
    return half, cpu, model.apply({'params': p}, waves_BxS)[0]

  (tokens, mask), cpu, want = run()
  assert tokens.dtype == jnp.bfloat16 and tokens.shape == (2, 25, 32)
  assert mask.all() and all(x.dtype == jnp.float32 for x in jax.tree.leaves(p))
  np.testing.assert_allclose(tokens.astype(np.float32), want, atol=0.1)
  np.testing.assert_allclose(cpu, want, atol=1e-5)


def test_conditional_generation_checkpoints_load(tiny, params, tmp_path):
  """`model.encoder.` prefix; decoder and proj_out dropped by name."""
  path = _copy(tiny, tmp_path)
  file = path / 'model.safetensors'
  hf = safetensors_np.load_file(file)
  hf = {f'model.{k}': v for k, v in hf.items()} | {
      'proj_out.weight': hf['decoder.embed_tokens.weight']}
  safetensors_np.save_file(hf, file)
  got = whisper.load(str(path), jax.tree.map(np.asarray, params))
  jax.tree.map(np.testing.assert_array_equal, got, params)


def test_missing_and_unexpected_tensors_are_named(tiny, params, tmp_path):
  path = _copy(tiny, tmp_path)
  file = path / 'model.safetensors'
  hf = safetensors_np.load_file(file)
  del hf['encoder.layers.1.fc2.bias']
  hf['encoder.layers.0.fc1.weights'] = hf.pop('encoder.layers.0.fc1.weight')
  hf['encoder.extra.weight'] = hf['encoder.conv1.bias']
  safetensors_np.save_file(hf, file)
  with pytest.raises(errors.UserError) as e:
    whisper.load(str(path), params)
  message = str(e.value)
  assert 'lacks 2 tensors' in message and 'has 2 the model does not use' in (
      message), message
  for name in ('encoder/layer_1/fc2/bias', 'encoder/layer_0/fc1/kernel',
               'encoder.layers.0.fc1.weights', 'encoder.extra.weight'):
    assert name in message, message


def test_other_sizes_are_a_shape_error(tiny):
  opts = whisper.options(tiny[0]) | {'mlp_dim': 48}
  template = _template(whisper_lib.WhisperEncoder(32, **opts, **FULL))
  with pytest.raises(errors.UserError, match='other shapes.*fc1'):
    whisper.load(tiny[0], template)


def test_unsupported_configs_and_folders_are_refused(tiny, tmp_path):
  path = _copy(tiny, tmp_path)
  config = json.loads((path / 'config.json').read_text())
  for change, words in (({'model_type': 'wav2vec2'}, "'wav2vec2' model"),
                        ({'activation_function': 'relu'}, 'relu')):
    (path / 'config.json').write_text(json.dumps(config | change))
    with pytest.raises(errors.UserError, match=words):
      whisper.options(str(path))
  with pytest.raises(errors.UserError, match='does not exist'):
    whisper.options(str(tmp_path / 'nope'))
  (path / 'model.safetensors').unlink()
  with pytest.raises(errors.UserError, match='lacks model.safetensors'):
    whisper.tensors(str(path))
