"""Time-series encoders: [B, T, F] (or [B, T]) -> one token per step [B, T, D].

Legend: B batch, T time steps, F input features, D width.
"""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from mmfusion.encoders import recurrent


def as_series(x, dtype):
  """[B, T, F] in `dtype`; a [B, T] input is one feature per step."""
  x = jnp.asarray(x)
  if x.ndim == 2:
    x = x[..., None]
  return x.astype(dtype)


class CausalConv(nn.Module):
  """Dilated 1D conv that only sees the present and the past (left padding)."""
  features: int
  kernel_size: int
  dilation: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x_BxTxF):
    pad = (self.kernel_size - 1) * self.dilation
    return nn.Conv(self.features, (self.kernel_size,),
                   kernel_dilation=(self.dilation,), padding=((pad, 0),),
                   dtype=self.dtype)(x_BxTxF)


class TemporalBlock(nn.Module):
  """Two dilated causal convs with ReLU and dropout, plus a residual (Bai et al. 2018)."""
  features: int
  kernel_size: int
  dilation: int
  dropout: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x_BxTxF, *, train: bool = False):
    y = x_BxTxF
    for _ in range(2):
      y = CausalConv(self.features, self.kernel_size, self.dilation,
                     self.dtype)(y)
      y = nn.Dropout(self.dropout, deterministic=not train)(nn.relu(y))
    res = x_BxTxF
    if res.shape[-1] != self.features:
      res = nn.Dense(self.features, dtype=self.dtype)(res)  # 1x1 conv
    return nn.relu(y + res)


class Tcn(nn.Module):
  """Temporal convolutional network (Bai et al. 2018): causal, dilation 2**i.

  The receptive field is 1 + 2 (kernel_size - 1)(2**num_blocks - 1) steps.
  Weight normalization of the paper is left out.
  """
  features: int
  num_blocks: int = 3
  kernel_size: int = 3
  dropout: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    x_BxTxD = as_series(x, self.dtype)
    for i in range(self.num_blocks):
      x_BxTxD = TemporalBlock(self.features, self.kernel_size, 2**i,
                              self.dropout, self.dtype)(x_BxTxD, train=train)
    return x_BxTxD, jnp.ones(x_BxTxD.shape[:2], jnp.bool_)


class SeriesGru(nn.Module):
  """GRU over time (Cho et al. 2014): the hidden state at each step."""
  features: int
  num_layers: int = 1
  bidirectional: bool = False  # also read the series backwards (not causal)
  dropout: float = 0.0  # between layers
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    x_BxTxF = as_series(x, self.dtype)
    b, t = x_BxTxF.shape[:2]
    h_BxTxD = recurrent.RnnStack(
        self.features, 'gru', self.num_layers, self.bidirectional,
        self.dropout, self.dtype)(
            x_BxTxF, jnp.full((b,), t, jnp.int32), train=train)
    return h_BxTxD, jnp.ones((b, t), jnp.bool_)
