"""The head a task puts on the fused representation.

Legend: B batch, D width, O outputs (classes, labels, targets, projection).
"""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp


class Head(nn.Module):
  """MLP head: hidden Dense+ReLU layers, then Dense(O), float32 outputs."""
  num_outputs: int
  hidden: tuple[int, ...] = ()
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, z_BxD):
    for width in self.hidden:
      z_BxD = nn.relu(nn.Dense(width, dtype=self.dtype)(z_BxD))
    return nn.Dense(self.num_outputs, dtype=self.dtype)(z_BxD).astype(
        jnp.float32)
