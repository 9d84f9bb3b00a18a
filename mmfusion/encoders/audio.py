"""Audio encoders: waveform [B, S] -> log-mel spectrogram -> tokens [B, T, D].

The spectrogram is computed in JAX inside the model (float32, any device):
frames of `n_fft` samples every `hop` samples (no centering; the wave is
zero-padded to one frame if shorter), periodic Hann window, power spectrum,
triangular mel filters on the HTK mel scale (mel = 2595 log10(1 + f/700),
filters peak at 1, no area normalization), then log(x + eps).
Legend: B batch, S samples, N frames, K fft bins, M mel bands, D width.
"""

import functools
from typing import Any, Literal

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from mmfusion.encoders import image
from mmfusion.encoders import transformer
from mmfusion.nn import kernels as kernels_lib


def hz_to_mel(f_hz):
  """HTK mel scale (Young et al., The HTK Book)."""
  return 2595.0 * np.log10(1.0 + np.asarray(f_hz, np.float64) / 700.0)


def mel_to_hz(mel):
  """Inverse of `hz_to_mel`."""
  return 700.0 * (10.0 ** (np.asarray(mel, np.float64) / 2595.0) - 1.0)


def slaney_mel(f_hz):
  """Slaney's mel scale (the Auditory Toolbox; librosa's default): linear
  below 1 kHz, logarithmic above."""
  f = np.asarray(f_hz, np.float64)
  log_f = 15.0 + np.log(np.maximum(f, 1e-10) / 1000.0) * 27.0 / np.log(6.4)
  return np.where(f >= 1000.0, log_f, 3.0 * f / 200.0)


def slaney_hz(mel):
  """Inverse of `slaney_mel`."""
  m = np.asarray(mel, np.float64)
  return np.where(m >= 15.0, 1000.0 * np.exp(np.log(6.4) / 27.0 * (m - 15.0)),
                  200.0 * m / 3.0)


@functools.lru_cache(maxsize=8)
def slaney_filterbank(sample_rate: int, n_fft: int, n_mels: int,
                      fmin: float, fmax: float) -> np.ndarray:
  """[K, M] float32 triangular filters on Slaney's mel scale over the
  n_fft // 2 + 1 DFT bins, each of unit area (2 / bandwidth in Hz), as
  librosa's `norm='slaney'` (Whisper's and the speech embedding's)."""
  bins_K = np.linspace(0.0, sample_rate / 2, n_fft // 2 + 1)
  edges = slaney_hz(np.linspace(slaney_mel(fmin), slaney_mel(fmax),
                                n_mels + 2))
  lo_M, center_M, hi_M = edges[:-2], edges[1:-1], edges[2:]
  rise_KxM = (bins_K[:, None] - lo_M) / (center_M - lo_M)
  fall_KxM = (hi_M - bins_K[:, None]) / (hi_M - center_M)
  fb_KxM = np.maximum(0.0, np.minimum(rise_KxM, fall_KxM)) * 2 / (hi_M - lo_M)
  fb_KxM = fb_KxM.astype(np.float32)
  fb_KxM.flags.writeable = False  # cached and shared
  return fb_KxM


@functools.lru_cache(maxsize=16)
def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int,
                   fmin: float = 0.0, fmax: float | None = None) -> np.ndarray:
  """[K, M] triangular filters, K = n_fft//2 + 1, evenly spaced in HTK mels."""
  fmax = sample_rate / 2 if fmax is None else fmax
  bins_K = np.fft.rfftfreq(n_fft, 1.0 / sample_rate)
  edges = mel_to_hz(np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), n_mels + 2))
  lo_M, center_M, hi_M = edges[:-2], edges[1:-1], edges[2:]
  rise_KxM = (bins_K[:, None] - lo_M) / (center_M - lo_M)
  fall_KxM = (hi_M - bins_K[:, None]) / (hi_M - center_M)
  fb_KxM = np.maximum(0.0, np.minimum(rise_KxM, fall_KxM)).astype(np.float32)
  fb_KxM.flags.writeable = False  # cached and shared
  return fb_KxM


def log_mel_spectrogram(wave_BxS, sample_rate: int = 16_000, n_fft: int = 400,
                        hop: int = 160, n_mels: int = 64, eps: float = 1e-6):
  """[B, N, M] float32 log-mel spectrogram, N = 1 + (max(S, n_fft) - n_fft)//hop."""
  wave_BxS = jnp.asarray(wave_BxS, jnp.float32)
  short = n_fft - wave_BxS.shape[-1]
  if short > 0:
    wave_BxS = jnp.pad(wave_BxS, ((0, 0), (0, short)))
  n = 1 + (wave_BxS.shape[-1] - n_fft) // hop
  idx_NxF = hop * np.arange(n)[:, None] + np.arange(n_fft)[None, :]
  window_F = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)
  frames_BxNxF = wave_BxS[:, idx_NxF] * window_F.astype(np.float32)
  power_BxNxK = jnp.abs(jnp.fft.rfft(frames_BxNxF, axis=-1)) ** 2
  mel_BxNxM = power_BxNxK @ mel_filterbank(sample_rate, n_fft, n_mels)
  return jnp.log(mel_BxNxM + eps)


class AudioCnn(nn.Module):
  """2D CNN over the log-mel spectrogram (Hershey et al. 2017), time tokens out.

  Per stage: 3x3 conv, GroupNorm, ReLU, 2x2 max-pool. The remaining mel axis is
  folded into the channels, so each token is one (pooled) stretch of time.
  """
  features: int
  channels: tuple[int, ...] = (32, 64)  # one stage per entry
  groups: int = 8  # GroupNorm groups (fewer when the width needs it)
  dropout: float = 0.0  # before the output projection
  sample_rate: int = 16_000
  n_fft: int = 400  # 25 ms at 16 kHz
  hop: int = 160  # 10 ms at 16 kHz
  n_mels: int = 64
  dtype: Any = jnp.float32
  kernels: kernels_lib.Kernels = kernels_lib.FLAX

  @nn.compact
  def __call__(self, wave_BxS, *, train: bool = False):
    k = self.kernels
    spec_BxNxM = log_mel_spectrogram(
        wave_BxS, self.sample_rate, self.n_fft, self.hop, self.n_mels)
    x = spec_BxNxM[..., None].astype(self.dtype)  # [B, N, M, 1]
    for c in self.channels:
      x = k.conv(c, (3, 3), dtype=self.dtype)(x)
      x = nn.relu(image.group_norm(k, c, self.groups, self.dtype)(x))
      x = k.max_pool(x, (2, 2), strides=(2, 2), padding='SAME')
    b, n, m, c = x.shape
    x_BxNxMC = nn.Dropout(self.dropout, deterministic=not train)(
        x.reshape(b, n, m * c))
    tokens_BxNxD = nn.Dense(self.features, dtype=self.dtype)(x_BxNxMC)
    return tokens_BxNxD, jnp.ones((b, n), jnp.bool_)


class AudioTransformer(nn.Module):
  """Audio Spectrogram Transformer (Gong et al. 2021), spectrogram patches out.

  Patches do not overlap (AST overlaps them by 6); frames and mel bands that do
  not fill a whole patch are dropped.
  """
  features: int
  patch_size: int = 16  # square patches over (frames, mel bands)
  num_layers: int = 2
  num_heads: int = 4
  mlp_dim: int | None = None  # None: 4 x features
  dropout: float = 0.0
  posemb: Literal['learned', 'sincos', 'none'] = 'learned'
  class_token: bool = False
  sample_rate: int = 16_000
  n_fft: int = 400  # 25 ms at 16 kHz
  hop: int = 160  # 10 ms at 16 kHz
  n_mels: int = 64
  dtype: Any = jnp.float32
  kernels: kernels_lib.Kernels = kernels_lib.FLAX

  @nn.compact
  def __call__(self, wave_BxS, *, train: bool = False):
    spec_BxNxM = log_mel_spectrogram(
        wave_BxS, self.sample_rate, self.n_fft, self.hop, self.n_mels)
    x = spec_BxNxM[..., None].astype(self.dtype)  # [B, N, M, 1]
    tokens_BxTxD = image.patchify(x, self.patch_size, self.features, self.dtype)
    return transformer.TokenTransformer(
        num_layers=self.num_layers, num_heads=self.num_heads,
        mlp_dim=self.mlp_dim, dropout=self.dropout, posemb=self.posemb,
        class_token=self.class_token, dtype=self.dtype,
        kernels=self.kernels)(tokens_BxTxD, train=train)
