"""The Transformer trunk every token-based encoder ends with.

Tokens (patches, words, spectrogram patches, tubelets, frames) get a position
embedding, an optional class token, and a pre-LN `layers.Encoder` that respects
the padding mask. Legend: B batch, T tokens, D width.
"""

from typing import Any, Literal

import flax.linen as nn
import jax.numpy as jnp

from mmfusion.nn import kernels as kernels_lib
from mmfusion.nn import layers
from mmfusion.runtime import errors

POSEMBS = ('learned', 'sincos', 'none')


def check_heads(features: int, num_heads: int):
  """Fails early, in one sentence, when the width does not split into heads."""
  if features % num_heads:
    raise errors.UserError(
        f'features={features} must be divisible by num_heads={num_heads}; '
        f'pick a width that is a multiple of the head count.')


class TokenTransformer(nn.Module):
  """Position embedding + optional class token + Transformer (Vaswani et al. 2017)."""
  num_layers: int = 2
  num_heads: int = 4
  mlp_dim: int | None = None  # None: 4 x width, as in ViT
  dropout: float = 0.0
  posemb: Literal['learned', 'sincos', 'none'] = 'learned'
  max_len: int | None = None  # learned table size; None: the length seen at init
  class_token: bool = False  # prepend a learned [CLS] token (token 0)
  dtype: Any = jnp.float32
  kernels: kernels_lib.Kernels = kernels_lib.FLAX

  @nn.compact
  def __call__(self, x_BxTxD, mask_BxT=None, *, train: bool = False):
    b, t, d = x_BxTxD.shape
    check_heads(d, self.num_heads)
    if mask_BxT is None:
      mask_BxT = jnp.ones((b, t), jnp.bool_)
    x_BxTxD = x_BxTxD.astype(self.dtype) + self._posemb(t, d)
    if self.class_token:
      cls_1x1xD = self.param('cls', nn.initializers.zeros, (1, 1, d))
      cls_Bx1xD = jnp.broadcast_to(cls_1x1xD.astype(self.dtype), (b, 1, d))
      x_BxTxD = jnp.concatenate([cls_Bx1xD, x_BxTxD], axis=1)
      mask_BxT = jnp.concatenate([jnp.ones((b, 1), jnp.bool_), mask_BxT], 1)
    x_BxTxD = nn.Dropout(self.dropout, deterministic=not train)(x_BxTxD)
    x_BxTxD = layers.Encoder(
        num_layers=self.num_layers, num_heads=self.num_heads,
        mlp_dim=self.mlp_dim or 4 * d, dropout=self.dropout,
        dtype=self.dtype, kernels=self.kernels)(x_BxTxD, mask_BxT, train=train)
    return x_BxTxD, mask_BxT

  def _posemb(self, t: int, d: int):
    """[T, D] position embedding in the compute dtype."""
    if self.posemb == 'none':
      return jnp.zeros((t, d), self.dtype)
    if self.posemb == 'sincos':
      return layers.sincos_posemb(t, d, self.dtype)
    if self.posemb != 'learned':
      raise errors.unknown_name('position embedding', self.posemb, POSEMBS)
    max_len = self.max_len or t
    if t > max_len:
      raise errors.UserError(
          f'the input has {t} tokens but the learned position embedding holds '
          f'max_len={max_len}; raise max_len or shorten the input.')
    table = self.param('pos_embedding', nn.initializers.normal(0.02),
                       (max_len, d))
    return table[:t].astype(self.dtype)
