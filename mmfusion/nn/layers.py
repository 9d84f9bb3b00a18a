"""Transformer building blocks shared by encoders and attention-based fusion.

Shape legend: B batch, T query tokens, S key/value tokens, D width, H heads,
K width per head. Masks are bool, True where a token is real.
"""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from mmfusion.nn import kernels as kernels_lib

Dtype = Any


def attention_mask(q_mask_BxT, kv_mask_BxS):
  """[B, 1, T, S] mask allowing query t to attend key s when both are real."""
  return nn.make_attention_mask(q_mask_BxT, kv_mask_BxS, dtype=jnp.bool_)


def masked_mean(x_BxTxD, mask_BxT):
  """Mean over the real tokens; a row with none gives zeros, never NaN."""
  w_BxTx1 = mask_BxT[..., None].astype(x_BxTxD.dtype)
  total_BxD = jnp.sum(x_BxTxD * w_BxTx1, axis=1)
  return total_BxD / jnp.maximum(jnp.sum(w_BxTx1, axis=1), 1.0)


class MlpBlock(nn.Module):
  """Dense -> GELU -> Dense, the feed-forward half of a Transformer block."""
  mlp_dim: int
  dropout: float = 0.0
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x_BxTxD, *, train: bool = False):
    d = x_BxTxD.shape[-1]
    h = nn.gelu(nn.Dense(self.mlp_dim, dtype=self.dtype)(x_BxTxD))
    h = nn.Dropout(self.dropout, deterministic=not train)(h)
    return nn.Dense(d, dtype=self.dtype)(h)


class Block(nn.Module):
  """Pre-LayerNorm Transformer block (Vaswani et al. 2017; pre-LN as in ViT).

  Self-attention when `kv_BxSxD` is None, otherwise cross-attention from the
  queries `x_BxTxD` to `kv_BxSxD` (the key/value stream is layer-normed too).
  """
  num_heads: int = 4
  mlp_dim: int = 256
  dropout: float = 0.0
  dtype: Dtype = jnp.float32
  kernels: kernels_lib.Kernels = kernels_lib.FLAX  # its attention op

  @nn.compact
  def __call__(self, x_BxTxD, mask_BxT=None, *, kv_BxSxD=None, kv_mask_BxS=None,
               train: bool = False):
    b, t = x_BxTxD.shape[:2]
    if mask_BxT is None:
      mask_BxT = jnp.ones((b, t), jnp.bool_)
    y = nn.LayerNorm(dtype=self.dtype)(x_BxTxD)
    if kv_BxSxD is None:
      kv, kv_mask_BxS = y, mask_BxT
    else:
      kv = nn.LayerNorm(dtype=self.dtype)(kv_BxSxD)
      if kv_mask_BxS is None:
        kv_mask_BxS = jnp.ones(kv.shape[:2], jnp.bool_)
    y = nn.MultiHeadDotProductAttention(
        num_heads=self.num_heads, dtype=self.dtype, dropout_rate=self.dropout,
        deterministic=not train, attention_fn=self.kernels.attention)(
            y, kv, mask=attention_mask(mask_BxT, kv_mask_BxS))
    x_BxTxD = x_BxTxD + nn.Dropout(self.dropout, deterministic=not train)(y)
    y = nn.LayerNorm(dtype=self.dtype)(x_BxTxD)
    y = MlpBlock(self.mlp_dim, self.dropout, self.dtype)(y, train=train)
    return x_BxTxD + nn.Dropout(self.dropout, deterministic=not train)(y)


class Encoder(nn.Module):
  """A stack of self-attention `Block`s with a final LayerNorm."""
  num_layers: int = 2
  num_heads: int = 4
  mlp_dim: int = 256
  dropout: float = 0.0
  dtype: Dtype = jnp.float32
  kernels: kernels_lib.Kernels = kernels_lib.FLAX

  @nn.compact
  def __call__(self, x_BxTxD, mask_BxT=None, *, train: bool = False):
    for _ in range(self.num_layers):
      x_BxTxD = Block(self.num_heads, self.mlp_dim, self.dropout, self.dtype,
                      self.kernels)(
          x_BxTxD, mask_BxT, train=train)
    return nn.LayerNorm(dtype=self.dtype)(x_BxTxD)


def sincos_posemb(t: int, d: int, dtype=jnp.float32):
  """[T, D] fixed sine/cosine position embedding (Vaswani et al. 2017)."""
  pos_Tx1 = jnp.arange(t, dtype=jnp.float32)[:, None]
  freq = jnp.exp(-jnp.log(10_000.0) * jnp.arange(0, d, 2, jnp.float32) / d)
  emb = jnp.zeros((t, d), jnp.float32)
  emb = emb.at[:, 0::2].set(jnp.sin(pos_Tx1 * freq))
  emb = emb.at[:, 1::2].set(jnp.cos(pos_Tx1 * freq[: d // 2]))
  return emb.astype(dtype)
