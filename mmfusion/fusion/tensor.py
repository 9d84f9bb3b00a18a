"""Multiplicative feature-level fusion: tensor, low-rank tensor, MI layers.

Each module pools each modality's tokens with a masked mean first.

Shape legend: B batch, D output width, E_m modality width, P projection
width, R rank, M modalities.
"""

from typing import Any, Literal

import flax.linen as nn
import jax.numpy as jnp

from mmfusion.runtime import errors
from mmfusion.fusion import common

Dtype = Any


def with_one(z_BxE):
  """[1; z]: the appended constant keeps the lower-order terms."""
  return jnp.concatenate([jnp.ones_like(z_BxE[:, :1]), z_BxE], axis=-1)


class TensorFusion(nn.Module):
  """Tensor Fusion Network (Zadeh et al., "Tensor Fusion Network for
  Multimodal Sentiment Analysis", EMNLP 2017).

  z_m = W_m pool(x_m) (size `proj_dim`); output = Linear(vec([1; z_1] ⊗ ... ⊗
  [1; z_M])), the first sorted modality varying slowest in the flattening.

  Missing: an absent modality's z_m is 0, so its [1; 0] factor keeps exactly
  the unimodal and cross terms of the present modalities.
  """
  features: int | None = None  # None: return the flattened tensor itself
  proj_dim: int | None = 8  # size of each z_m; None: the pooled vectors as is
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, tokens, masks, present, *, train: bool = False):
    pooled = common.pool(common.clean_tokens(tokens, masks, present, self.dtype))
    t_BxK = None
    for m, z_BxE in pooled.items():
      if self.proj_dim is not None:
        z_BxE = nn.Dense(self.proj_dim, dtype=self.dtype, name=f'proj_{m}')(z_BxE)
      p_B = common.present_of(present, m, z_BxE.shape[0])
      z1_BxE = with_one(jnp.where(p_B[:, None], z_BxE, 0))
      if t_BxK is None:
        t_BxK = z1_BxE
      else:
        t_BxK = (t_BxK[:, :, None] * z1_BxE[:, None, :]).reshape(
            z1_BxE.shape[0], -1)  # [B, K * (E + 1)]
    if self.features is not None:
      t_BxK = nn.Dense(self.features, dtype=self.dtype, name='linear')(t_BxK)
    return t_BxK


class LowRankTensor(nn.Module):
  """Low-rank Multimodal Fusion (Liu et al., "Efficient Low-rank Multimodal
  Fusion with Modality-Specific Factors", ACL 2018).

  h = sum_r w_r prod_m ([1; z_m] W_m^(r)) + b, with z_m the pooled modality
  vector and W_m^(r) of shape [E_m + 1, D].

  Missing: an absent modality's z_m is 0, so its factor is the learned row
  W_m^(r)[0] that multiplies the constant 1 (a learned missing embedding).
  """
  features: int | None = None  # None: widest modality width
  rank: int = 4
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, tokens, masks, present, *, train: bool = False):
    pooled = common.pool(common.clean_tokens(tokens, masks, present, self.dtype))
    d = common.width(self.features, [z.shape[-1] for z in pooled.values()])
    init = nn.initializers.xavier_normal(in_axis=-2, out_axis=-1, batch_axis=0)
    prod_BxRxD = None
    for m, z_BxE in pooled.items():
      p_B = common.present_of(present, m, z_BxE.shape[0])
      z1_BxE = with_one(jnp.where(p_B[:, None], z_BxE, 0))
      w_RxExD = self.param(f'factor_{m}', init,
                           (self.rank, z1_BxE.shape[-1], d))
      h_BxRxD = jnp.einsum('be,red->brd', z1_BxE, w_RxExD.astype(self.dtype))
      prod_BxRxD = h_BxRxD if prod_BxRxD is None else prod_BxRxD * h_BxRxD
    w_R = self.param('rank_weights', nn.initializers.lecun_normal(),
                     (1, self.rank))[0]
    b_D = self.param('bias', nn.initializers.zeros, (d,))
    return (jnp.einsum('r,brd->bd', w_R.astype(self.dtype), prod_BxRxD)
            + b_D.astype(self.dtype))


MI_FORMS = ('matrix', 'vector', 'scalar')


class Multiplicative(nn.Module):
  """Multiplicative interactions (Jayakumar et al., "Multiplicative
  Interactions and Where to Find Them", ICLR 2020).

  The `target` modality is the input x and the other modalities, pooled and
  concatenated in sorted order, are the context z:
  f(x, z) = W'(z) x + b'(z), W'(z) = z^T W + V, b'(z) = z^T U + b, where W'(z)
  is a full [E_x, D] matrix (`form='matrix'`, W a 3-tensor), a diagonal, i.e.
  a per-channel gate (`'vector'`), or a scalar times identity (`'scalar'`).
  For 'vector' and 'scalar' x is first projected to width D when it differs.

  Missing: each absent modality's pooled vector (x or a part of z) is a
  learned embedding (zero-init, so an absent context starts as f = V x + b).
  """
  features: int | None = None  # None: widest modality width
  form: Literal['matrix', 'vector', 'scalar'] = 'matrix'
  target: str | None = None  # the input x; None: first modality in sorted order
  proj_dim: int | None = None  # project x and z to this width first; None: no
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, tokens, masks, present, *, train: bool = False):
    if self.form not in MI_FORMS:
      raise errors.UserError(
          f'fusion \'multiplicative\': form={self.form!r} is not one of '
          f'{", ".join(MI_FORMS)}.')
    pooled = common.pool(common.clean_tokens(tokens, masks, present, self.dtype))
    names = list(pooled)
    common.need_two('multiplicative', names)
    target = common.choose_modality('multiplicative', 'target', self.target,
                                    names)
    d = common.width(self.features, [z.shape[-1] for z in pooled.values()])
    vecs = {}
    for m, z_BxE in pooled.items():
      if self.proj_dim is not None:
        z_BxE = nn.Dense(self.proj_dim, dtype=self.dtype, name=f'proj_{m}')(z_BxE)
      p_B = common.present_of(present, m, z_BxE.shape[0])
      vecs[m] = common.Missing(self.dtype, name=f'missing_{m}')(z_BxE, p_B)
    x_BxE = vecs[target]
    z_BxZ = jnp.concatenate([vecs[m] for m in common.others(names, target)], -1)
    if self.form != 'matrix' and x_BxE.shape[-1] != d:
      x_BxE = nn.Dense(d, dtype=self.dtype, name='in_proj')(x_BxE)
    e, zdim = x_BxE.shape[-1], z_BxZ.shape[-1]
    bias_BxD = nn.Dense(d, dtype=self.dtype, name='context_bias')(z_BxZ)
    if self.form == 'matrix':
      init = nn.initializers.lecun_normal(in_axis=(0, 1), out_axis=2)
      w_ZxExD = self.param('w', init, (zdim, e, d)).astype(self.dtype)
      out = jnp.einsum('bz,zed,be->bd', z_BxZ, w_ZxExD, x_BxE)
      v_BxD = nn.Dense(d, use_bias=False, dtype=self.dtype, name='v')(x_BxE)
      return out + v_BxD + bias_BxD
    if self.form == 'vector':
      gate_BxD = nn.Dense(d, dtype=self.dtype, name='gate',
                          bias_init=nn.initializers.ones)(z_BxZ)
    else:
      gate_BxD = nn.Dense(1, dtype=self.dtype, name='gate',
                          bias_init=nn.initializers.ones)(z_BxZ)
    return gate_BxD * x_BxE + bias_BxD
