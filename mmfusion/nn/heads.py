"""Task heads: what turns a fused representation into predictions.

Legend: B batch, D width, C classes.
"""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp


class Head(nn.Module):
  """MLP classifier head: hidden Dense+ReLU layers, then Dense(C), f32 logits."""
  num_classes: int
  hidden: tuple[int, ...] = ()
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, z_BxD):
    for width in self.hidden:
      z_BxD = nn.relu(nn.Dense(width, dtype=self.dtype)(z_BxD))
    return nn.Dense(self.num_classes, dtype=self.dtype)(z_BxD).astype(
        jnp.float32)
