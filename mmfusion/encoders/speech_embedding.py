"""Google's speech embedding (TF Hub google/speech_embedding/1) in Flax.

The front end and network reproduce the two ONNX files that openWakeWord
(Apache-2.0) converted from the TF Hub model and feeds as follows:

  melspectrogram.onnx  int16-scale samples -> 512-sample frames every 160
      samples (no centring), a 400-sample periodic Hann window centred in
      each frame, |DFT|^2, 32 Slaney mel filters (60-3800 Hz, area
      normalised), 10 log10(max(x, 1e-10)), floored at (max - 80) dB;
      openWakeWord then applies x / 10 + 2.
  embedding_model.onnx  76-frame windows [76, 32, 1] -> 96 features: a 3x3
      conv (mel axis zero-padded by 1), ReLU and an inference BatchNorm, then
      pairs of a 1x3 conv (mel 'SAME') and a 3x1 conv (time 'VALID') with 2x2
      or 1x2 max-pools between channel stages, a final 3x1 conv. Every conv
      but the last is followed by LeakyReLU(0.2) and max(x, -0.4) (the
      graph's elementwise Max against a constant): a leaky ReLU whose negative
      side stops at -0.4.

`mmfusion.pretrained.speech_embedding` fills the parameters from the ONNX
initializers. The BatchNormalization is the per-channel affine `norm_0`
(scale = gamma / sqrt(var + eps), bias = beta - mean * scale), folded by the
loader: it sits after a ReLU, so it cannot fold into conv_0, and mmfusion has
no mutable batch_stats collection; in inference mode a BatchNorm is exactly
this affine.

Waves are floats in [-1, 1] (int16 / 32768), scaled by 32768 to the int16
range the ONNX front end expects. Tokens are one embedding per 76-frame window,
windows every `hop_frames` frames (8, as openWakeWord), frames that do not fill
a last window dropped; a wave shorter than one window (12,512 samples, 0.78 s)
is zero-padded (silence) at the end to one. The mask is all True.
Legend: B batch, S samples, N frames, F frame length, K DFT bins, M mel bands,
T windows (tokens), W window frames, C channels, E embedding width (96),
D features.
"""

import functools
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np
from jax import lax

from mmfusion.encoders import audio
from mmfusion.nn import kernels as kernels_lib
from mmfusion.runtime import errors

SAMPLE_RATE = 16_000
INT16_SCALE = 32768.0  # mmfusion's waves are int16 / 32768
N_FFT = 512  # frame length, and the DFT size
WIN_LENGTH = 400  # Hann window (25 ms), centred in the 512-sample frame
HOP = 160  # 10 ms
N_MELS = 32
FMIN, FMAX = 60.0, 3800.0  # mel filter range (Hz)
AMIN = 1e-10  # power floor before the log
TOP_DB = 80.0  # dynamic range kept below each example's maximum
WINDOW_FRAMES = 76  # mel frames per embedding window
EMBED_DIM = 96
MIN_SAMPLES = N_FFT + (WINDOW_FRAMES - 1) * HOP  # one window: 12,512
LEAKY_SLOPE = 0.2  # LeakyRelu alpha in the graph
FLOOR = -0.4  # the graph's Max(x, -0.4) after each LeakyRelu
# (channels, (1x3, 3x1) conv pairs, max-pool window) per stage, after conv_0
_STAGES = ((24, 1, (2, 2)), (48, 2, (1, 2)), (72, 2, (2, 2)),
           (96, 2, (1, 2)), (96, 2, (2, 2)))


def mel_filterbank() -> np.ndarray:
  """[K, M] triangular Slaney-scale filters, each scaled to unit area
  (2 / bandwidth in Hz); the front end's `1.melW`."""
  return audio.slaney_filterbank(SAMPLE_RATE, N_FFT, N_MELS, FMIN, FMAX)


@functools.lru_cache(maxsize=1)
def dft_kernels() -> tuple[np.ndarray, np.ndarray]:
  """[F, K] windowed DFT (real, imaginary); the front end's conv weights."""
  pad = (N_FFT - WIN_LENGTH) // 2
  window_F = np.zeros(N_FFT)
  window_F[pad:pad + WIN_LENGTH] = 0.5 - 0.5 * np.cos(
      2 * np.pi * np.arange(WIN_LENGTH) / WIN_LENGTH)  # periodic Hann
  angle_FxK = 2 * np.pi * np.outer(np.arange(N_FFT),
                                   np.arange(N_FFT // 2 + 1)) / N_FFT
  out = []
  for part_FxK in (np.cos(angle_FxK), -np.sin(angle_FxK)):
    part_FxK = (window_F[:, None] * part_FxK).astype(np.float32)
    part_FxK.flags.writeable = False
    out.append(part_FxK)
  return tuple(out)


def log_mel_spectrogram(wave_BxS):
  """[B, N, M] float32 dB mel spectrogram of melspectrogram.onnx, N = 1 +
  (S - 512) // 160; waves in [-1, 1] are scaled to int16 range first.

  The ONNX graph floors at (max - 80) dB with the max over its whole input
  batch; here it is each example's, so examples do not change each other
  (the same for a batch of one, which is how openWakeWord calls it per clip).
  """
  x_BxS = jnp.asarray(wave_BxS, jnp.float32) * INT16_SCALE
  n = 1 + (x_BxS.shape[-1] - N_FFT) // HOP
  idx_NxF = HOP * np.arange(n)[:, None] + np.arange(N_FFT)[None, :]
  frames_BxNxF = x_BxS[:, idx_NxF]
  real_FxK, imag_FxK = dft_kernels()
  hi = lax.Precision.HIGHEST  # no bf16/TF32 passes for a fixed transform
  power_BxNxK = (jnp.matmul(frames_BxNxF, real_FxK, precision=hi) ** 2 +
                 jnp.matmul(frames_BxNxF, imag_FxK, precision=hi) ** 2)
  mel_BxNxM = jnp.matmul(power_BxNxK, mel_filterbank(), precision=hi)
  db_BxNxM = (10.0 * jnp.log(jnp.maximum(mel_BxNxM, AMIN)) /
              np.float32(np.log(10.0)))  # the graph's 10 * ln(x) / ln(10)
  top_Bx1x1 = jnp.max(db_BxNxM, axis=(1, 2), keepdims=True)
  return jnp.maximum(db_BxNxM, top_Bx1x1 - TOP_DB)


def _act(x):
  """LeakyReLU(0.2) floored at -0.4, the graph's LeakyRelu then Max."""
  return jnp.maximum(nn.leaky_relu(x, LEAKY_SLOPE), FLOOR)


class Affine(nn.Module):
  """Per-channel x * scale + bias: an inference-mode BatchNorm, folded."""
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x_BxHxWxC):
    c = x_BxHxWxC.shape[-1]
    scale_C = self.param('scale', nn.initializers.ones_init(), (c,))
    bias_C = self.param('bias', nn.initializers.zeros_init(), (c,))
    x, scale_C, bias_C = nn.dtypes.promote_dtype(
        x_BxHxWxC, scale_C, bias_C, dtype=self.dtype)
    return x * scale_C + bias_C


class EmbeddingNet(nn.Module):
  """embedding_model.onnx: mel windows [B, 76, 32, 1] -> embeddings [B, 96]."""
  dtype: Any = jnp.float32
  kernels: kernels_lib.Kernels = kernels_lib.FLAX

  @nn.compact
  def __call__(self, x_BxWxMx1):
    k = self.kernels
    mel_same = ((0, 0), (1, 1))  # zero-pad the mel axis only
    x = x_BxWxMx1.astype(self.dtype)
    x = k.conv(24, (3, 3), padding=mel_same, use_bias=False,
               dtype=self.dtype, name='conv_0')(x)  # [B, 74, 32, 24]
    x = _act(Affine(self.dtype, name='norm_0')(nn.relu(x)))
    i = 1
    for c, pairs, pool in _STAGES:
      for _ in range(pairs):
        x = _act(k.conv(c, (1, 3), padding=mel_same, dtype=self.dtype,
                        name=f'conv_{i}')(x))
        x = _act(k.conv(c, (3, 1), padding='VALID', dtype=self.dtype,
                        name=f'conv_{i + 1}')(x))  # 2 frames fewer
        i += 2
      x = k.max_pool(x, pool, strides=pool, padding='VALID')
    x = k.conv(EMBED_DIM, (3, 1), padding='VALID', use_bias=False,
               dtype=self.dtype, name=f'conv_{i}')(x)  # [B, 1, 1, 96]
    return x.reshape(x.shape[0], EMBED_DIM)


class SpeechEmbedding(nn.Module):
  """Waveforms [B, S] -> one 96-d speech embedding per 76-frame mel window."""
  features: int  # != 96: a new Dense `proj` maps the embeddings to it
  hop_frames: int = 8  # mel frames (80 ms) between windows, as openWakeWord
  dtype: Any = jnp.float32  # the network's; the front end is float32
  kernels: kernels_lib.Kernels = kernels_lib.FLAX

  @nn.compact
  def __call__(self, wave_BxS, *, train: bool = False):
    del train  # no dropout or batch statistics
    if self.hop_frames < 1:
      raise errors.UserError(
          f'speech_embedding hop_frames must be a positive number of mel '
          f'frames (openWakeWord uses 8), got {self.hop_frames}.')
    wave_BxS = jnp.asarray(wave_BxS, jnp.float32)
    short = MIN_SAMPLES - wave_BxS.shape[-1]
    if short > 0:
      wave_BxS = jnp.pad(wave_BxS, ((0, 0), (0, short)))
    mel_BxNxM = log_mel_spectrogram(wave_BxS) / 10.0 + 2.0  # openWakeWord's
    b, n, m = mel_BxNxM.shape
    t = 1 + (n - WINDOW_FRAMES) // self.hop_frames
    idx_TxW = (self.hop_frames * np.arange(t)[:, None] +
               np.arange(WINDOW_FRAMES)[None, :])
    win_BTxWxMx1 = mel_BxNxM[:, idx_TxW].reshape(b * t, WINDOW_FRAMES, m, 1)
    emb_BTxE = EmbeddingNet(self.dtype, self.kernels, name='net')(win_BTxWxMx1)
    tokens_BxTxD = emb_BTxE.reshape(b, t, EMBED_DIM)
    if self.features != EMBED_DIM:
      tokens_BxTxD = nn.Dense(self.features, dtype=self.dtype,
                              name='proj')(tokens_BxTxD)
    return tokens_BxTxD, jnp.ones((b, t), jnp.bool_)
