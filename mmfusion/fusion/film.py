"""Feature-wise linear modulation (FiLM).

Perez, Strub, de Vries, Dumoulin & Courville, "FiLM: Visual Reasoning with a
General Conditioning Layer", AAAI 2018.

Shape legend: B batch, T tokens, D width, E_m modality width.
"""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from mmfusion.nn import layers
from mmfusion.fusion import common

Dtype = Any


class FiLM(nn.Module):
  """The other modalities predict per-channel (gamma, beta) for the target.

  Context c = [pool(x_m) for m != target] (sorted order); a linear FiLM
  generator gives gamma = 1 + dgamma(c) and beta(c). Each target token goes
  through a FiLM-ed residual block, x + relu(gamma * (W x) + beta), as in the
  paper's residual blocks, and the tokens are mean-pooled.

  Missing: an absent context modality's pooled vector is a learned embedding;
  an absent target is replaced by a learned token, still modulated by the
  present context.
  """
  features: int | None = None  # None: the target's own width, no projection
  target: str | None = None  # None: first modality in sorted order
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, tokens, masks, present, *, train: bool = False):
    cleaned = common.clean_tokens(tokens, masks, present, self.dtype)
    names = list(cleaned)
    common.need_two('film', names)
    target = common.choose_modality('film', 'target', self.target, names)
    pooled = common.pool(cleaned)
    b = pooled[target].shape[0]
    context = []
    for m in common.others(names, target):
      context.append(common.Missing(self.dtype, name=f'missing_{m}')(
          pooled[m], common.present_of(present, m, b)))
    c_BxC = jnp.concatenate(context, axis=-1)

    x_BxTxD, valid_BxT = cleaned[target]
    if self.features is not None:
      x_BxTxD = nn.Dense(self.features, dtype=self.dtype, name='proj')(x_BxTxD)
    d = x_BxTxD.shape[-1]
    p_B = common.present_of(present, target, b)
    x_BxTxD = common.Missing(self.dtype, name=f'missing_{target}')(x_BxTxD, p_B)
    valid_BxT = valid_BxT | ~p_B[:, None]

    film_Bx2D = nn.Dense(2 * d, dtype=self.dtype, name='generator')(c_BxC)
    gamma_BxD, beta_BxD = 1 + film_Bx2D[:, :d], film_Bx2D[:, d:]
    h_BxTxD = nn.Dense(d, dtype=self.dtype, name='linear')(x_BxTxD)
    h_BxTxD = nn.relu(gamma_BxD[:, None] * h_BxTxD + beta_BxD[:, None])
    return layers.masked_mean(x_BxTxD + h_BxTxD, valid_BxT)
