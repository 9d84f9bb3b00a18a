"""A stack of (optionally bidirectional) RNN layers over padded sequences.

Legend: B batch, T steps, E input width, D width. Sequences are right-padded;
`seq_lengths_B` makes the backward direction start at each row's last real
step, so padding never changes the outputs at real steps.
"""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from mmfusion.runtime import errors

CELLS = {'gru': nn.GRUCell, 'lstm': nn.OptimizedLSTMCell}


class RnnStack(nn.Module):
  """`num_layers` RNNs (Elman 1990; GRU Cho et al. 2014; LSTM Hochreiter 1997)."""
  features: int
  cell: str = 'gru'  # 'gru' or 'lstm'
  num_layers: int = 1
  bidirectional: bool = False  # both directions, concatenated, then Dense(D)
  dropout: float = 0.0  # between layers
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x_BxTxE, seq_lengths_B, *, train: bool = False):
    if self.cell not in CELLS:
      raise errors.unknown_name('recurrent cell', self.cell, CELLS)
    cell_cls = CELLS[self.cell]
    x = x_BxTxE.astype(self.dtype)
    for i in range(self.num_layers):
      if i:
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
      rnn = nn.RNN(cell_cls(self.features, dtype=self.dtype))
      if self.bidirectional:
        back = nn.RNN(cell_cls(self.features, dtype=self.dtype))
        x = nn.Bidirectional(rnn, back)(x, seq_lengths=seq_lengths_B)  # [B, T, 2D]
        x = nn.Dense(self.features, dtype=self.dtype)(x)
      else:
        x = rnn(x, seq_lengths=seq_lengths_B)  # [B, T, D]
    return x.astype(self.dtype)
