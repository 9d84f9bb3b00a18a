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
import jax
import jax.numpy as jnp

from mmfusion.runtime import errors
from mmfusion.fusion import common

Dtype = Any


def standardize(x_BxF):
  """Zero mean, unit variance over the features of each example."""
  x_BxF = x_BxF.astype(jnp.float32)
  mean_Bx1 = jnp.mean(x_BxF, axis=-1, keepdims=True)
  var_Bx1 = jnp.var(x_BxF, axis=-1, keepdims=True)
  return (x_BxF - mean_Bx1) * jax.lax.rsqrt(var_Bx1 + 1e-6)


class Early(nn.Module):
  """Concatenates the modalities' inputs along their last (feature) axis.

  `layout='aligned'`: inputs must agree on every axis but the last: vectors
  [B, F_m] give [B, sum F_m + M], aligned sequences [B, T, F_m] give
  [B, T, sum F_m + M] (any shared leading shape works the same way).
  `layout='flat'`: each input is flattened to [B, prod(shape_m)] first, the
  data-level concatenation of unaligned raw inputs (an image, a waveform and
  token ids become one vector), each standardised per example (zero mean, unit
  variance over its features) so that uint8 pixels and waveforms enter on one
  scale. `'auto'`: aligned when the shapes allow it,
  else flat. Modalities are in sorted order, then M presence indicators
  (1.0 present, 0.0 absent), broadcast over the non-batch axes.

  Missing: an absent modality's features are zero-imputed, and its presence
  indicator says so.
  """
  indicators: bool = True  # append one presence feature per modality
  layout: str = 'auto'  # 'aligned', 'flat' or 'auto' (aligned if possible)
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, inputs, present, *, train: bool = False):
    names = sorted(inputs)
    shapes = {m: tuple(jnp.shape(inputs[m])) for m in names}
    aligned = len({s[:-1] for s in shapes.values()}) == 1 and all(
        len(s) >= 2 for s in shapes.values())
    if self.layout not in ('aligned', 'flat', 'auto'):
      raise errors.UserError(
          f"early fusion: layout={self.layout!r} is not one of 'aligned', "
          "'flat', 'auto'.")
    if self.layout == 'aligned' and not aligned:
      raise errors.UserError(
          'early fusion with layout=\'aligned\' needs inputs that agree on '
          'every axis but the last (e.g. [B, F] or [B, T, F] with equal T), '
          f'got shapes {shapes}; set model.fusion_kwargs.layout=\'flat\' to '
          'concatenate them flattened.')
    if self.layout == 'flat' or not aligned:
      inputs = {m: standardize(jnp.reshape(inputs[m], (shapes[m][0], -1)))
                for m in names}
      shapes = {m: tuple(jnp.shape(inputs[m])) for m in names}
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
