"""Early (data-level) fusion: one input for a single shared encoder.

Concatenation of aligned raw features before any modality-specific
processing, as in the early-fusion baselines of Baltrušaitis, Ahuja &
Morency, "Multimodal Machine Learning: A Survey and Taxonomy", TPAMI 2019
(and Snoek et al., "Early versus Late Fusion in Semantic Video Analysis",
ACM MM 2005).

Shape legend: B batch, T time steps, F_m modality features, M modalities.
"""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from mmfusion import errors
from mmfusion.fusion import common

Dtype = Any


class Early(nn.Module):
  """Concatenates the modalities' inputs along their last (feature) axis.

  Inputs must agree on every axis but the last: vectors [B, F_m] give
  [B, sum F_m + M], aligned sequences [B, T, F_m] give [B, T, sum F_m + M]
  (any shared leading shape works the same way). Modalities are in sorted
  order, then M presence indicators (1.0 present, 0.0 absent), broadcast over
  the non-batch axes.

  Missing: an absent modality's features are zero-imputed, and its presence
  indicator says so.
  """
  indicators: bool = True  # append one presence feature per modality
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, inputs, present, *, train: bool = False):
    names = sorted(inputs)
    shapes = {m: tuple(jnp.shape(inputs[m])) for m in names}
    if len({s[:-1] for s in shapes.values()}) > 1 or any(
        len(s) < 2 for s in shapes.values()):
      raise errors.UserError(
          'early fusion needs aligned inputs that agree on every axis but the '
          f'last (e.g. [B, F] or [B, T, F] with equal T), got shapes {shapes}; '
          'use an intermediate or late fusion for unaligned modalities.')
    lead = shapes[names[0]][:-1]
    parts, flags = [], []
    for m in names:
      p_B = common.present_of(present, m, lead[0])
      keep = p_B.reshape((-1,) + (1,) * (len(lead)))
      parts.append(jnp.where(keep, jnp.asarray(inputs[m]), 0).astype(self.dtype))
      flags.append(jnp.broadcast_to(keep, lead + (1,)).astype(self.dtype))
    if self.indicators:
      parts += flags
    return jnp.concatenate(parts, axis=-1)
