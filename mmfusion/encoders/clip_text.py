"""CLIP's text tower (Radford et al. 2021, "Learning Transferable Visual Models
From Natural Language Supervision").

A native Flax port of HF's `CLIPTextModel`, whose parameters
`mmfusion.pretrained.clip` fills: token + learned position embeddings, N
pre-LN layers (`hf_vit.PreLnLayer`) with causal self-attention, a final
LayerNorm. Ids are CLIP BPE ids, right-padded.

Padding is found from the end-of-text token, not the pad id alone, because
CLIP's tokenizer usually pads with <|endoftext|> itself: in a row that holds
`eos_id`, every position up to and including its first `eos_id` is real and
every later one is padding, whatever its id; a row without `eos_id` (text
truncated without it) takes `ids != pad_id`. The mask also masks the
attention keys, as HF's attention mask does; with causal attention, padding
never changes the states of the real tokens before it.

The pooled state (`pool`: the only token) is HF 5.23's: with
`eos_rule='first_eos'` the state at the first `eos_id` (position 0 in a row
without one); with `eos_rule='max_id'`, which HF keeps for configs whose
`eos_token_id` is 2 (the original OpenAI conversions), the state at the
largest id of the row, which is <|endoftext|> in the original vocabulary.
Legend: B batch, L sequence length, E hidden width, D features.
"""

from typing import Any, Literal

import flax.linen as nn
import jax.numpy as jnp

from mmfusion.encoders import hf_vit
from mmfusion.nn import kernels as kernels_lib
from mmfusion.runtime import errors

EOS_RULES = ('first_eos', 'max_id')


def padding_mask(ids_BxL, eos_id: int, pad_id: int):
  """[B, L] True at real tokens (the module docstring's rule)."""
  is_eos_BxL = ids_BxL == eos_id
  first_B = jnp.argmax(is_eos_BxL, axis=1)
  upto_BxL = jnp.arange(ids_BxL.shape[1]) <= first_B[:, None]
  return jnp.where(is_eos_BxL.any(axis=1, keepdims=True), upto_BxL,
                   ids_BxL != pad_id)


class ClipText(nn.Module):
  """CLIP text encoder; defaults are openai/clip-vit-base-patch16's."""
  features: int  # != hidden_size: a new Dense `proj` maps to it
  vocab_size: int = 49408
  hidden_size: int = 512
  num_layers: int = 12
  num_heads: int = 8
  mlp_dim: int = 2048
  max_len: int = 77  # rows of the position table (max_position_embeddings)
  layer_norm_eps: float = 1e-5
  activation: Literal['gelu', 'quick_gelu'] = 'quick_gelu'
  eos_id: int = 49407  # <|endoftext|>: ends the text, pools it
  eos_rule: Literal['first_eos', 'max_id'] = 'first_eos'  # see the docstring
  pad_id: int = 49407  # the tokenizer's; only read in rows without eos_id
  pool: bool = False  # only the pooled (end-of-text) state
  dropout: float = 0.0  # on embeddings, attention weights and layer outputs
  dtype: Any = jnp.float32
  kernels: kernels_lib.Kernels = kernels_lib.FLAX  # its attention op

  @nn.compact
  def __call__(self, ids_BxL, *, train: bool = False):
    hf_vit.check_heads(self.hidden_size, self.num_heads)
    if self.eos_rule not in EOS_RULES:
      raise errors.unknown_name('eos_rule', self.eos_rule, EOS_RULES)
    b, length = ids_BxL.shape
    if length > self.max_len:
      raise errors.UserError(
          f'the input has {length} tokens but the position table holds '
          f'{self.max_len}; shorten the input to at most that.')
    mask_BxL = padding_mask(ids_BxL, self.eos_id, self.pad_id)
    embed = lambda n, name: nn.Embed(n, self.hidden_size, dtype=self.dtype,
                                     embedding_init=hf_vit.INIT, name=name)
    x_BxLxE = (embed(self.vocab_size, 'token_embedding')(ids_BxL) +
               embed(self.max_len, 'position_embedding')(jnp.arange(length)))
    x_BxLxE = nn.Dropout(self.dropout, deterministic=not train)(x_BxLxE)
    causal_LxL = jnp.tril(jnp.ones((length, length), jnp.bool_))
    attend_Bx1xLxL = causal_LxL & mask_BxL[:, None, None, :]  # real keys only
    for i in range(self.num_layers):
      x_BxLxE = hf_vit.PreLnLayer(
          self.num_heads, self.mlp_dim, self.layer_norm_eps, self.activation,
          self.dropout, self.dtype, self.kernels, name=f'layer_{i}')(
              x_BxLxE, attend_Bx1xLxL, train=train)
    x_BxLxE = nn.LayerNorm(self.layer_norm_eps, dtype=self.dtype,
                           name='final_ln')(x_BxLxE)
    if self.pool:
      at_B = jnp.argmax(ids_BxL if self.eos_rule == 'max_id'
                        else ids_BxL == self.eos_id, axis=1)
      x_BxLxE = x_BxLxE[jnp.arange(b), at_B][:, None]  # [B, 1, E]
      mask_BxL = mask_BxL.any(axis=1, keepdims=True)
    if self.features != self.hidden_size:
      x_BxLxE = nn.Dense(self.features, dtype=self.dtype, name='proj')(x_BxLxE)
    return x_BxLxE, mask_BxL
