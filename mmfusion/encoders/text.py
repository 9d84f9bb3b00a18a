"""Text encoders: int token ids [B, L] (0 = padding, right-padded) -> [B, L, D].

Tokens are per-position states; the mask is `ids != 0`, so padding is never a
real token, and it does not change the outputs at real positions.
Legend: B batch, L sequence length, E embedding width, D width.
"""

from typing import Any, Literal

import flax.linen as nn
import jax.numpy as jnp

from mmfusion.encoders import recurrent
from mmfusion.encoders import transformer
from mmfusion.nn import kernels as kernels_lib


class _TextRnn(nn.Module):
  """Token embedding + RNN stack; `cell` is set by the subclasses below."""
  features: int
  vocab_size: int = 256  # ids must be < vocab_size; 256 fits byte tokens
  embed_dim: int | None = None  # None: features
  num_layers: int = 1
  bidirectional: bool = False
  dropout: float = 0.0  # on the embeddings and between layers
  dtype: Any = jnp.float32
  cell = 'gru'

  @nn.compact
  def __call__(self, ids_BxL, *, train: bool = False):
    mask_BxL = ids_BxL != 0
    x_BxLxE = nn.Embed(self.vocab_size, self.embed_dim or self.features,
                       dtype=self.dtype)(ids_BxL)
    x_BxLxE = nn.Dropout(self.dropout, deterministic=not train)(x_BxLxE)
    h_BxLxD = recurrent.RnnStack(
        self.features, self.cell, self.num_layers, self.bidirectional,
        self.dropout, self.dtype)(
            x_BxLxE, jnp.sum(mask_BxL, axis=1), train=train)
    return h_BxLxD, mask_BxL


class TextGru(_TextRnn):
  """Embedding + GRU (Cho et al. 2014) over the real tokens."""
  cell = 'gru'


class TextLstm(_TextRnn):
  """Embedding + LSTM (Hochreiter & Schmidhuber 1997) over the real tokens."""
  cell = 'lstm'


class TextTransformer(nn.Module):
  """Embedding + Transformer encoder (Vaswani et al. 2017; Devlin et al. 2019)."""
  features: int
  vocab_size: int = 256  # ids must be < vocab_size; 256 fits byte tokens
  num_layers: int = 2
  num_heads: int = 4
  mlp_dim: int | None = None  # None: 4 x features
  dropout: float = 0.0
  posemb: Literal['learned', 'sincos', 'none'] = 'learned'
  max_len: int = 512  # longest input a learned position table covers
  class_token: bool = False  # prepend a [CLS] token (token 0, always real)
  dtype: Any = jnp.float32
  kernels: kernels_lib.Kernels = kernels_lib.FLAX

  @nn.compact
  def __call__(self, ids_BxL, *, train: bool = False):
    mask_BxL = ids_BxL != 0
    x_BxLxD = nn.Embed(self.vocab_size, self.features, dtype=self.dtype)(ids_BxL)
    return transformer.TokenTransformer(
        num_layers=self.num_layers, num_heads=self.num_heads,
        mlp_dim=self.mlp_dim, dropout=self.dropout, posemb=self.posemb,
        max_len=self.max_len, class_token=self.class_token, dtype=self.dtype,
        kernels=self.kernels)(x_BxLxD, mask_BxL, train=train)
