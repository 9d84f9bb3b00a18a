"""Encoder for feature vectors and tabular records: [B, F] -> one token [B, 1, D]."""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp


class Mlp(nn.Module):
  """MLP (Rumelhart et al. 1986); `hidden=()` is the seed model, Dense+ReLU."""
  features: int
  hidden: tuple[int, ...] = ()
  dropout: float = 0.0  # after each hidden layer
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    b = x.shape[0]
    x_BxF = jnp.asarray(x).reshape(b, -1).astype(self.dtype)
    for width in self.hidden:
      x_BxF = nn.relu(nn.Dense(width, dtype=self.dtype)(x_BxF))
      x_BxF = nn.Dropout(self.dropout, deterministic=not train)(x_BxF)
    z_BxD = nn.relu(nn.Dense(self.features, dtype=self.dtype)(x_BxF))
    return z_BxD[:, None, :], jnp.ones((b, 1), jnp.bool_)
