"""BERT-family text encoder (Devlin et al. 2019; RoBERTa, Liu et al. 2019).

A native Flax port of the post-LayerNorm BERT encoder whose parameters
`mmfusion.pretrained.bert` fills from a Hugging Face checkpoint: word,
position and token-type embeddings (every token of type 0), a LayerNorm, then
N layers of [self-attention -> residual -> LayerNorm -> Dense -> exact GELU ->
Dense -> residual -> LayerNorm]. Ids are right-padded with `pad_id`; the mask
is `ids != pad_id` and masks the attention keys, so padding does not change
the outputs at real positions. `positions='roberta'` numbers the real tokens
from pad_id + 1, as RoBERTa checkpoints expect.
Legend: B batch, L sequence length, H hidden width, D features, M mlp width.
"""

from typing import Any, Literal

import flax.linen as nn
import jax.numpy as jnp

from mmfusion.nn import kernels as kernels_lib
from mmfusion.runtime import errors

POSITIONS = ('absolute', 'roberta')
_INIT = nn.initializers.normal(0.02)  # BERT's initializer_range


class BertLayer(nn.Module):
  """Post-LN Transformer layer: attention and MLP, each added then normed."""
  num_heads: int
  mlp_dim: int
  layer_norm_eps: float
  dropout: float = 0.0
  dtype: Any = jnp.float32
  kernels: kernels_lib.Kernels = kernels_lib.FLAX

  @nn.compact
  def __call__(self, x_BxLxH, mask_BxL, *, train: bool = False):
    drop = nn.Dropout(self.dropout, deterministic=not train)
    y_BxLxH = nn.MultiHeadDotProductAttention(
        num_heads=self.num_heads, dtype=self.dtype, kernel_init=_INIT,
        dropout_rate=self.dropout, deterministic=not train,
        attention_fn=self.kernels.attention, name='attention')(
            x_BxLxH, x_BxLxH, mask=mask_BxL[:, None, None, :])  # keys only
    x_BxLxH = nn.LayerNorm(self.layer_norm_eps, dtype=self.dtype,
                           name='attention_ln')(x_BxLxH + drop(y_BxLxH))
    h_BxLxM = nn.Dense(self.mlp_dim, dtype=self.dtype, kernel_init=_INIT,
                       name='intermediate')(x_BxLxH)
    h_BxLxM = nn.gelu(h_BxLxM, approximate=False)  # HF's "gelu" is erf's
    y_BxLxH = nn.Dense(x_BxLxH.shape[-1], dtype=self.dtype, kernel_init=_INIT,
                       name='output')(h_BxLxM)
    return nn.LayerNorm(self.layer_norm_eps, dtype=self.dtype,
                        name='output_ln')(x_BxLxH + drop(y_BxLxH))


class Bert(nn.Module):
  """BERT encoder; defaults are all-MiniLM-L6-v2's (Wang et al. 2020)."""
  features: int  # != hidden_size: a new Dense `proj` maps to it
  vocab_size: int = 30522
  hidden_size: int = 384
  num_layers: int = 6
  num_heads: int = 12
  mlp_dim: int = 1536
  max_len: int = 512  # rows of the position table (max_position_embeddings)
  type_vocab_size: int = 2  # rows of the token-type table; only type 0 is used
  layer_norm_eps: float = 1e-12
  pad_id: int = 0  # RoBERTa's is 1
  positions: Literal['absolute', 'roberta'] = 'absolute'  # see the docstring
  dropout: float = 0.0  # on embeddings, attention weights and layer outputs
  dtype: Any = jnp.float32
  kernels: kernels_lib.Kernels = kernels_lib.FLAX  # its attention op

  @nn.compact
  def __call__(self, ids_BxL, *, train: bool = False):
    if self.hidden_size % self.num_heads:
      raise errors.UserError(
          f'hidden_size={self.hidden_size} must be divisible by num_heads='
          f'{self.num_heads}; use the checkpoint\'s sizes (pretrained.bert.'
          f'options).')
    mask_BxL = ids_BxL != self.pad_id
    embed = lambda n, name: nn.Embed(n, self.hidden_size, dtype=self.dtype,
                                     embedding_init=_INIT, name=name)
    x_BxLxH = (embed(self.vocab_size, 'word_embeddings')(ids_BxL) +
               embed(self.max_len, 'position_embeddings')(
                   self._positions(ids_BxL, mask_BxL)) +
               embed(self.type_vocab_size, 'token_type_embeddings')(
                   jnp.zeros_like(ids_BxL)))
    x_BxLxH = nn.LayerNorm(self.layer_norm_eps, dtype=self.dtype,
                           name='embeddings_ln')(x_BxLxH)
    x_BxLxH = nn.Dropout(self.dropout, deterministic=not train)(x_BxLxH)
    for i in range(self.num_layers):
      x_BxLxH = BertLayer(self.num_heads, self.mlp_dim, self.layer_norm_eps,
                          self.dropout, self.dtype, self.kernels,
                          name=f'layer_{i}')(x_BxLxH, mask_BxL, train=train)
    if self.features != self.hidden_size:
      x_BxLxH = nn.Dense(self.features, dtype=self.dtype, name='proj')(x_BxLxH)
    return x_BxLxH, mask_BxL

  def _positions(self, ids_BxL, mask_BxL):
    """[B, L] rows of the position table each token reads."""
    length = ids_BxL.shape[1]
    if self.positions not in POSITIONS:
      raise errors.unknown_name('positions', self.positions, POSITIONS)
    first = self.pad_id + 1 if self.positions == 'roberta' else 0
    if first + length > self.max_len:
      raise errors.UserError(
          f'the input has {length} tokens but the position table holds '
          f'{self.max_len - first} ({self.positions} positions); shorten the '
          f'input to at most that.')
    if self.positions == 'absolute':
      return jnp.broadcast_to(jnp.arange(length), ids_BxL.shape)
    # RoBERTa: real tokens count up from pad_id + 1, padding sits at pad_id.
    real_BxL = mask_BxL.astype(jnp.int32)
    return jnp.cumsum(real_BxL, axis=1) * real_BxL + self.pad_id
