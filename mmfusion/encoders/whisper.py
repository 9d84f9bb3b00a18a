"""Whisper's audio encoder (Radford et al. 2022, "Robust Speech Recognition
via Large-Scale Weak Supervision") in Flax, log-mel front end included.

Front end (`log_mel_spectrogram`), as transformers' WhisperFeatureExtractor:
the wave, already zero-padded or cut (`fit`), is reflect-padded by 200 samples
at both ends (torch.stft's centring), cut into 400-sample frames every 160
samples, periodic Hann window, |DFT|^2, Slaney-scale mel filters over 0-8 kHz
scaled to unit area (`mel_filters`, transformers' mel_filter_bank with
norm='slaney', mel_scale='slaney'), log10(max(x, 1e-10)), floored at each
example's maximum - 8, then (x + 4) / 4. The last frame is dropped, so S
samples give S // 160 frames. Always float32.

Network (`LogMelEncoder`), as transformers' WhisperEncoder: Conv1d (k 3) and
GELU, Conv1d (k 3, stride 2) and GELU, plus the position table
`embed_positions` (sinusoids at init; checkpoints store it), then pre-LN
layers [LN -> self-attention (no key bias) -> residual; LN -> Dense -> exact
GELU -> Dense -> residual] and a final LayerNorm. Each Conv1d runs as
`kernels.conv` over [B, N, 1, C] (width 1), so every kernel set applies.

Lengths. Whisper only ever saw 30 s: every clip zero-padded to 480,000
samples, 3,000 frames, 1,500 tokens, attending over the padded silence.
`max_seconds=30` (the default) does exactly that, so any clip costs 1,500
tokens. A smaller `max_seconds`
pads or cuts to that length and `None` keeps the wave's own length, both
rounded up to whole tokens (320 samples, 20 ms), and the first rows of the
position table are used. That departs from training: without the trailing
silence the attention sees other context, so the states differ from the
30 s ones: fine-tuning can adapt to that, a frozen encoder cannot.
`embed_positions` trains with the rest under finetune='full' (Hugging Face
freezes it). The mask is True for tokens whose centre sample (320 t) lies in
the input wave; it never masks Whisper's own attention.
Legend: B batch, S samples, N frames, F frame length, K DFT bins, M mel bands,
C channels, T tokens, P positions, D d_model, H heads, E head width, L mlp
width.
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
N_FFT = 400  # 25 ms frames
HOP = 160  # 10 ms between frames
SAMPLES_PER_TOKEN = 2 * HOP  # the second conv's stride 2: 20 ms per token
FMAX = 8000.0  # top of the mel filters (Hz)
POWER_FLOOR = 1e-10  # before log10
LOG_RANGE = 8.0  # log10 units kept below each example's maximum (80 dB)
LAYER_NORM_EPS = 1e-5  # torch's nn.LayerNorm default, which Whisper keeps
_INIT = nn.initializers.normal(0.02)  # Hugging Face's init_std
_CONV_PAD = ((1, 1), (0, 0))  # Conv1d(padding=1) on [B, N, 1, C]


def mel_filters(n_mels: int) -> np.ndarray:
  """[K, M] triangular Slaney filters on the 201 DFT bins, unit area."""
  return audio.slaney_filterbank(SAMPLE_RATE, N_FFT, n_mels, 0.0, FMAX)


def num_samples(length: int, max_seconds: float | None) -> int:
  """Samples a wave of `length` is padded or cut to: `max_seconds` (None:
  `length`) rounded up to whole tokens."""
  want = length if max_seconds is None else round(max_seconds * SAMPLE_RATE)
  return -(-want // SAMPLES_PER_TOKEN) * SAMPLES_PER_TOKEN


def fit(wave_BxS, samples: int):
  """[B, samples]: `wave_BxS` zero-padded (silence) at the end, or cut."""
  wave_BxS = jnp.asarray(wave_BxS, jnp.float32)[:, :samples]
  return jnp.pad(wave_BxS, ((0, 0), (0, samples - wave_BxS.shape[1])))


def log_mel_spectrogram(wave_BxS, n_mels: int = 80):
  """[B, N, M] float32 Whisper features, N = S // 160: WhisperFeatureExtractor's
  input_features [B, M, N] of the same (padded or cut) wave, transposed.
  Needs S > 200 for the reflection."""
  x_BxS = jnp.asarray(wave_BxS, jnp.float32)
  n = x_BxS.shape[1] // HOP
  half = N_FFT // 2
  x_BxS = jnp.pad(x_BxS, ((0, 0), (half, half)), mode='reflect')
  idx_NxF = HOP * np.arange(n)[:, None] + np.arange(N_FFT)[None, :]
  window_F = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(N_FFT) / N_FFT)
  dft_BxNxK = jnp.fft.rfft(x_BxS[:, idx_NxF] * window_F.astype(np.float32))
  power_BxNxK = jnp.real(dft_BxNxK) ** 2 + jnp.imag(dft_BxNxK) ** 2
  mel_BxNxM = jnp.matmul(power_BxNxK, mel_filters(n_mels),
                         precision=lax.Precision.HIGHEST)  # no TF32 passes
  log_BxNxM = jnp.log10(jnp.maximum(mel_BxNxM, POWER_FLOOR))
  top_Bx1x1 = jnp.max(log_BxNxM, axis=(1, 2), keepdims=True)
  return (jnp.maximum(log_BxNxM, top_Bx1x1 - LOG_RANGE) + 4.0) / 4.0


def sinusoids(length: int, channels: int) -> np.ndarray:
  """[length, channels] float32 Whisper positions: sines then cosines of
  timescales from 1 to 10,000."""
  step = np.log(10_000.0) / (channels // 2 - 1)
  inv_C = np.exp(-step * np.arange(channels // 2))
  angle_PxC = np.arange(length)[:, None] * inv_C[None, :]
  return np.concatenate([np.sin(angle_PxC), np.cos(angle_PxC)],
                        1).astype(np.float32)


class SelfAttention(nn.Module):
  """Whisper's self-attention: query, key (no bias), value and out Denses
  around the kernel set's attention op, every position attending to all."""
  num_heads: int
  dropout: float = 0.0  # on the attention weights
  dtype: Any = jnp.float32
  kernels: kernels_lib.Kernels = kernels_lib.FLAX

  @nn.compact
  def __call__(self, x_BxTxD, *, train: bool = False):
    d = x_BxTxD.shape[-1]
    heads = (self.num_heads, d // self.num_heads)
    dense = lambda bias, name: nn.DenseGeneral(
        heads, use_bias=bias, dtype=self.dtype, kernel_init=_INIT, name=name)
    q_BxTxHxE = dense(True, 'query')(x_BxTxD)
    k_BxTxHxE = dense(False, 'key')(x_BxTxD)  # a key bias cancels in softmax
    v_BxTxHxE = dense(True, 'value')(x_BxTxD)
    drop = train and self.dropout > 0
    y_BxTxHxE = self.kernels.attention(
        q_BxTxHxE, k_BxTxHxE, v_BxTxHxE,
        dropout_rng=self.make_rng('dropout') if drop else None,
        dropout_rate=self.dropout, deterministic=not train, dtype=self.dtype)
    return nn.DenseGeneral(d, axis=(-2, -1), dtype=self.dtype,
                           kernel_init=_INIT, name='out')(y_BxTxHxE)


class WhisperLayer(nn.Module):
  """Pre-LN Transformer layer: LN -> attention and LN -> MLP, each added."""
  num_heads: int
  mlp_dim: int
  dropout: float = 0.0
  dtype: Any = jnp.float32
  kernels: kernels_lib.Kernels = kernels_lib.FLAX

  @nn.compact
  def __call__(self, x_BxTxD, *, train: bool = False):
    drop = nn.Dropout(self.dropout, deterministic=not train)
    norm = lambda name: nn.LayerNorm(LAYER_NORM_EPS, dtype=self.dtype,
                                     name=name)
    y_BxTxD = SelfAttention(self.num_heads, self.dropout, self.dtype,
                            self.kernels, name='attention')(
                                norm('attention_ln')(x_BxTxD), train=train)
    x_BxTxD = x_BxTxD + drop(y_BxTxD)
    h_BxTxL = nn.Dense(self.mlp_dim, dtype=self.dtype, kernel_init=_INIT,
                       name='fc1')(norm('mlp_ln')(x_BxTxD))
    h_BxTxL = nn.gelu(h_BxTxL, approximate=False)  # HF's "gelu" is erf's
    y_BxTxD = nn.Dense(x_BxTxD.shape[-1], dtype=self.dtype, kernel_init=_INIT,
                       name='fc2')(h_BxTxL)
    return x_BxTxD + drop(y_BxTxD)


class LogMelEncoder(nn.Module):
  """transformers' WhisperEncoder: features [B, N, M] -> states [B, N/2, D]."""
  d_model: int
  num_layers: int
  num_heads: int
  mlp_dim: int
  max_source_positions: int  # rows of `embed_positions`; T may be fewer
  dropout: float = 0.0
  dtype: Any = jnp.float32
  kernels: kernels_lib.Kernels = kernels_lib.FLAX

  @nn.compact
  def __call__(self, mel_BxNxM, *, train: bool = False):
    conv = functools.partial(self.kernels.conv, self.d_model, (3, 1),
                             padding=_CONV_PAD, dtype=self.dtype,
                             kernel_init=_INIT)
    x = mel_BxNxM[:, :, None, :].astype(self.dtype)  # [B, N, 1, M]
    x = nn.gelu(conv(name='conv1')(x), approximate=False)
    x = nn.gelu(conv(strides=(2, 1), name='conv2')(x), approximate=False)
    x_BxTxD = x[:, :, 0, :]
    t = x_BxTxD.shape[1]
    if t > self.max_source_positions:
      raise errors.UserError(
          f'the input makes {t} tokens but Whisper\'s position table holds '
          f'{self.max_source_positions}; give at most '
          f'{2 * self.max_source_positions} frames.')
    pos_PxD = self.param(
        'embed_positions', lambda _, shape: jnp.asarray(sinusoids(*shape)),
        (self.max_source_positions, self.d_model))
    x_BxTxD = x_BxTxD + pos_PxD[:t].astype(self.dtype)
    x_BxTxD = nn.Dropout(self.dropout, deterministic=not train)(x_BxTxD)
    for i in range(self.num_layers):
      x_BxTxD = WhisperLayer(self.num_heads, self.mlp_dim, self.dropout,
                             self.dtype, self.kernels, name=f'layer_{i}')(
                                 x_BxTxD, train=train)
    return nn.LayerNorm(LAYER_NORM_EPS, dtype=self.dtype,
                        name='layer_norm')(x_BxTxD)


class WhisperEncoder(nn.Module):
  """Waveforms [B, S] -> Whisper encoder states, one token per 20 ms; the
  defaults are whisper-tiny's. See the module docstring for lengths."""
  features: int  # != d_model: a new Dense `proj` maps to it
  d_model: int = 384
  num_layers: int = 4
  num_heads: int = 6
  mlp_dim: int = 1536
  n_mels: int = 80  # large-v3's is 128
  max_source_positions: int = 1500  # 30 s of tokens
  max_seconds: float | None = 30.0  # pad or cut to this; None: the wave's own
  dropout: float = 0.0  # on positions, attention weights and layer outputs
  dtype: Any = jnp.float32  # the network's; the front end is float32
  kernels: kernels_lib.Kernels = kernels_lib.FLAX

  @nn.compact
  def __call__(self, wave_BxS, *, train: bool = False):
    if self.d_model % 2 or self.d_model % self.num_heads:
      raise errors.UserError(
          f'whisper d_model={self.d_model} must be even and divisible by '
          f'num_heads={self.num_heads}; use the checkpoint\'s sizes '
          f'(pretrained.whisper.options).')
    if self.max_seconds is not None and not self.max_seconds > 0:
      raise errors.UserError(
          f'whisper max_seconds={self.max_seconds!r} must be a positive '
          f'number of seconds (30: as Whisper was trained) or None (each '
          f'batch\'s own length).')
    b, s = wave_BxS.shape
    samples = num_samples(s, self.max_seconds)
    t = samples // SAMPLES_PER_TOKEN
    if t > self.max_source_positions:
      raise errors.UserError(
          f'whisper needs {t} positions for {samples / SAMPLE_RATE:g} s but '
          f'has {self.max_source_positions} '
          f'({self.max_source_positions * SAMPLES_PER_TOKEN / SAMPLE_RATE:g} '
          f's); set max_seconds to at most that.')
    mel_BxNxM = log_mel_spectrogram(fit(wave_BxS, samples), self.n_mels)
    x_BxTxD = LogMelEncoder(
        self.d_model, self.num_layers, self.num_heads, self.mlp_dim,
        self.max_source_positions, self.dropout, self.dtype, self.kernels,
        name='encoder')(mel_BxNxM, train=train)
    if self.features != self.d_model:
      x_BxTxD = nn.Dense(self.features, dtype=self.dtype, name='proj')(x_BxTxD)
    mask_T = SAMPLES_PER_TOKEN * np.arange(t) < s  # centre inside the wave
    return x_BxTxD, jnp.broadcast_to(jnp.asarray(mask_T), (b, t))
