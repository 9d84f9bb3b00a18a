"""SpeechEmbedding and its ONNX loader against onnxruntime and openWakeWord."""

import shutil

import jax
import jax.numpy as jnp
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from mmfusion.encoders import speech_embedding as se
from mmfusion.nn import kernels
from mmfusion.pretrained import speech_embedding as pse
from mmfusion.pretrained import weights
from mmfusion.runtime import errors

# The reference frameworks (PyTorch, transformers, onnxruntime) and full-size
# pretrained models: the slow tier (make test-slow, run by CI).
pytestmark = pytest.mark.slow

S = 24_000  # 1.5 s: 147 mel frames, 9 windows


def _close(got, want, tol=1e-4):
  """Max abs difference within tol, relative to the values' scale past 1."""
  diff = np.abs(np.asarray(got, np.float32) - want).max()
  assert diff <= tol * max(1.0, np.abs(want).max()), diff


@pytest.fixture(scope='module')
def clips_int16():
  """[2, S] int16: white noise and a 440 Hz sine at half scale."""
  rng = np.random.default_rng(0)
  noise = np.clip(np.rint(rng.normal(0, 0.3 * 32768, S)), -32768, 32767)
  sine = np.rint(16384 * np.sin(2 * np.pi * 440 * np.arange(S) / 16_000))
  return np.stack([noise, sine]).astype(np.int16)


@pytest.fixture(scope='module')
def sessions():
  path = pse.folder('speech-embedding')
  cpu = ['CPUExecutionProvider']
  return [ort.InferenceSession(str(path / f), providers=cpu)
          for f in pse.FILES]


@pytest.fixture(scope='module')
def params(clips_int16):
  template = jax.eval_shape(se.SpeechEmbedding(96).init, jax.random.key(0),
                            clips_int16[:, :se.MIN_SAMPLES] / 32768)['params']
  return pse.load('speech-embedding', template)


@pytest.fixture(scope='module')
def tokens_f32(clips_int16, params):
  tokens_BxTxD, mask_BxT = jax.jit(se.SpeechEmbedding(96).apply)(
      {'params': params}, clips_int16 / 32768)
  assert tokens_BxTxD.shape == (2, 9, 96) and mask_BxT.all()
  return np.asarray(tokens_BxTxD)


def test_front_end_matches_onnx(clips_int16, sessions):
  got_BxNxM = jax.jit(se.log_mel_spectrogram)(clips_int16 / 32768)
  for i, clip in enumerate(clips_int16):  # one clip a call, as openWakeWord
    want_1x1xNxM = sessions[0].run(None, {'input': clip[None].astype(
        np.float32)})[0]
    assert got_BxNxM[i].shape == want_1x1xNxM[0, 0].shape == (147, 32)
    _close(got_BxNxM[i], want_1x1xNxM[0, 0])  # dB values up to ~106


def test_network_matches_onnx(clips_int16, sessions, params):
  mel_NxM = sessions[0].run(None, {'input': clips_int16[:1].astype(
      np.float32)})[0][0, 0] / 10 + 2
  windows = np.stack([mel_NxM[i:i + 76] for i in range(0, 147 - 75, 8)])
  windows = windows[..., None].astype(np.float32)  # [9, 76, 32, 1]
  want_Nx96 = sessions[1].run(None, {'input_1': windows})[0].reshape(-1, 96)
  got_Nx96 = jax.jit(se.EmbeddingNet().apply)({'params': params['net']},
                                              windows)
  _close(got_Nx96, want_Nx96)


def _openwakeword_embeddings(sessions, clip_S):
  """openwakeword 0.4.0's AudioFeatures._get_embeddings on the same files
  (its package import pulls in scikit-learn: 3 s, so mirrored here)."""
  mel_NxM = sessions[0].run(None, {'input': clip_S[None].astype(
      np.float32)})[0].squeeze() / 10 + 2
  windows = [mel_NxM[i:i + 76] for i in range(0, mel_NxM.shape[0], 8)]
  batch = np.stack([w for w in windows if w.shape[0] == 76])[..., None]
  return sessions[1].run(None, {'input_1': batch})[0].squeeze(axis=(1, 2))


def test_encoder_matches_openwakeword(clips_int16, sessions, params,
                                      tokens_f32):
  for i, clip in enumerate(clips_int16):
    _close(tokens_f32[i], _openwakeword_embeddings(sessions, clip))
  # A wave shorter than a window is zero-padded to one; XLA:CPU kernels agree.
  model = se.SpeechEmbedding(96, kernels=kernels.XLA_CPU)
  tokens_1x1xD, _ = jax.jit(model.apply)({'params': params},
                                         clips_int16[:1, :5000] / 32768)
  padded = np.pad(clips_int16[0, :5000], (0, se.MIN_SAMPLES - 5000))
  _close(tokens_1x1xD[0], _openwakeword_embeddings(sessions, padded))


def test_proj_and_bf16(clips_int16, params, tokens_f32):
  """(Forward mode and second derivatives: tests/test_kernels.py's sweep.)"""
  model = se.SpeechEmbedding(64, dtype=jnp.bfloat16)
  template = jax.eval_shape(model.init, jax.random.key(0),
                            clips_int16 / 32768)['params']
  assert set(template) == {'net', 'proj'} and 'proj' not in params
  assert template['proj']['kernel'].shape == (96, 64)
  proj = {'kernel': np.eye(96, 64, dtype=np.float32),
          'bias': np.zeros(64, np.float32)}  # stands for a fresh init
  loaded = pse.load('speech-embedding', {**template, 'proj': proj})
  np.testing.assert_array_equal(loaded['proj']['kernel'], proj['kernel'])
  assert all(v.dtype == jnp.float32 for v in jax.tree.leaves(loaded))
  tokens_BxTx64, _ = jax.jit(model.apply)({'params': loaded},
                                          clips_int16 / 32768)
  assert tokens_BxTx64.dtype == jnp.bfloat16
  _close(tokens_BxTx64, tokens_f32[..., :64], tol=0.1)  # bf16 over 20 convs


def _copy(tmp_path):
  src = pse.folder('speech-embedding')
  for f in pse.FILES:
    shutil.copy(src / f, tmp_path / f)
  return tmp_path


def _one_sentence(e):
  msg = str(e.value)
  assert msg.endswith('.') and '. ' not in msg, msg


def _tamper(path, name_part, change):
  model = onnx.load(str(path))
  for t in model.graph.initializer:
    if name_part in t.name:
      t.CopyFrom(numpy_helper.from_array(change(numpy_helper.to_array(t)),
                                         t.name))
  onnx.save(model, str(path))


def test_bad_checkpoints(tmp_path, params, monkeypatch):
  folder = _copy(tmp_path)
  (folder / 'embedding_model.onnx').unlink()
  with pytest.raises(errors.UserError, match='lacks embedding_model.onnx') as e:
    pse.load(str(folder), params)
  _one_sentence(e)

  folder = _copy(tmp_path)
  _tamper(folder / 'embedding_model.onnx', 'conv2d_19/', lambda a: a[:, :, :2])
  with pytest.raises(errors.UserError,
                     match=r'other shapes.*net/conv_19/kernel') as e:
    pse.load(str(folder), params)
  _one_sentence(e)

  folder = _copy(tmp_path)
  _tamper(folder / 'melspectrogram.onnx', 'melW', lambda a: 2 * a)
  with pytest.raises(errors.UserError, match='not the speech-embedding front'):
    pse.tensors(str(folder))
  with monkeypatch.context() as m:
    m.setattr(pse.importlib.util, 'find_spec', lambda name: None)
    with pytest.raises(errors.UserError, match='pip package openwakeword'):
      pse.load('speech-embedding', params)
  with pytest.raises(errors.UserError, match='hop_frames'):
    jax.eval_shape(se.SpeechEmbedding(96, hop_frames=0).init,
                   jax.random.key(0), np.zeros((1, 100), np.float32))
  # Every tensor of the packaged files has a place, and nothing is left over.
  assert set(weights.flat_names(params)) == set(pse.tensors('speech-embedding'))
