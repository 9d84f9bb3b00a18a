"""An autoregressive pre-LN Transformer decoder with a key/value cache.

Conditioning on the multimodal encoding, by `conditioning`:
  cross_attention  every block attends to `memory_BxMxD` (masked by
                   `memory_mask_BxM`) after its causal self-attention: the
                   encoder-decoder of Vaswani et al. 2017 and CoCa's
                   multimodal decoder (Yu et al. 2022).
  prefix           the memory, projected to the decoder's width, is
                   prepended to the text and attended causally, or fully
                   within the prefix with `prefix_lm` (PaLI, Chen et al.
                   2022; CapPa, Tschannen et al. 2023).
A pooled [B, D] memory is one memory token.

Token id `pad_id` (0) is padding: a padding token is never attended to, and
in the incremental call it does not occupy the cache or advance the position,
so a batch of right-padded prompts of different lengths is prefilled in one
call and every row goes on from its own last real token.

The cache is an explicit pytree, not flax's `cache` collection: the decoding
loops (`mmfusion.nn.decoding`) carry it through `lax.while_loop` as a plain
value, beam search reorders it along its batch axis (every leaf is
batch-major), it is sharded over the mesh like a batch, and a whole prompt
is prefilled in one call (flax's attention cache takes one token per call).
Each row has its own next slot and position (`index_B`, `position_B`).

    logits_BxLxV = decoder.apply(variables, tokens_BxL, memory, memory_mask)
    cache = decoder.apply(variables, memory, memory_mask, max_length=L,
                          method=Decoder.init_cache)
    logits_BxTxV, cache = decoder.apply(variables, tokens_BxT, cache,
                                        method=Decoder.extend)

Legend: B batch, L text tokens, T tokens added in one call, M memory tokens,
S cache slots, D width, H heads, K width per head, V vocabulary.
"""

from typing import Any

import flax.linen as nn
import jax
from jax import lax
import jax.numpy as jnp

from mmfusion.nn import kernels as kernels_lib
from mmfusion.nn import layers
from mmfusion.runtime import errors

Dtype = Any
CONDITIONINGS = ('cross_attention', 'prefix')
POSITIONS = ('learned', 'sincos')


def as_tokens(memory, memory_mask=None):
  """([B, M, D], bool [B, M]): a pooled [B, D] memory is one token, and no
  mask means every memory token is real."""
  if memory.ndim == 2:
    memory = memory[:, None]
    if memory_mask is not None and memory_mask.ndim == 1:
      memory_mask = memory_mask[:, None]
  if memory_mask is None:
    memory_mask = jnp.ones(memory.shape[:2], jnp.bool_)
  return memory, memory_mask.astype(jnp.bool_)


def write(cache, new, index_B, axis: int = 1):
  """`new` written into each row b of the cache along `axis` (its slots)
  from slot index_B[b]."""
  return jax.vmap(lambda c, x, i: lax.dynamic_update_slice_in_dim(
      c, x, i, axis - 1))(cache, new, index_B)


# The cache holds keys as [B, H, K, S] and values as [B, H, S, K], the
# layouts the two attention products read (t5x's decoder cache does the
# same), so that a step does not transpose the whole cache to attend to it.
def to_cache(k_BxSxHxK, v_BxSxHxK):
  return {'k': jnp.transpose(k_BxSxHxK, (0, 2, 3, 1)),
          'v': jnp.transpose(v_BxSxHxK, (0, 2, 1, 3))}


def from_cache(kv):
  """(keys, values), both [B, S, H, K] as the attention op takes them."""
  return (jnp.transpose(kv['k'], (0, 3, 1, 2)),
          jnp.transpose(kv['v'], (0, 2, 1, 3)))


def causal_mask(slot_BxT, valid_BxS):
  """[B, 1, T, S]: the query in slot t sees the real slots s <= t."""
  s_S = jnp.arange(valid_BxS.shape[1])
  seen_BxTxS = (s_S[None, None] <= slot_BxT[..., None]) & valid_BxS[:, None]
  return seen_BxTxS[:, None]


class Attention(nn.Module):
  """Multi-head dot-product attention whose key/value projection is a method
  of its own, so that keys and values are computed once and cached."""
  features: int  # D
  num_heads: int
  dropout: float = 0.0  # on the attention weights, in training
  dtype: Dtype = jnp.float32
  kernels: kernels_lib.Kernels = kernels_lib.FLAX

  def setup(self):
    if self.features % self.num_heads:
      raise errors.UserError(
          f'decoder width {self.features} does not split over '
          f'{self.num_heads} heads; pick a width that num_heads divides.')
    heads = (self.num_heads, self.features // self.num_heads)
    self.query = nn.DenseGeneral(heads, dtype=self.dtype)
    self.key = nn.DenseGeneral(heads, dtype=self.dtype)
    self.value = nn.DenseGeneral(heads, dtype=self.dtype)
    self.out = nn.DenseGeneral(self.features, axis=(-2, -1), dtype=self.dtype)

  def keys_values(self, x_BxSxD):
    return self.key(x_BxSxD), self.value(x_BxSxD)

  def __call__(self, x_BxTxD, k_BxSxHxK, v_BxSxHxK, mask_Bx1xTxS, train):
    rng = self.make_rng('dropout') if train and self.dropout > 0 else None
    y_BxTxHxK = self.kernels.attention(
        self.query(x_BxTxD), k_BxSxHxK, v_BxSxHxK, mask=mask_Bx1xTxS,
        dropout_rng=rng, dropout_rate=self.dropout, deterministic=not train,
        dtype=self.dtype)
    return self.out(y_BxTxHxK)


class DecoderBlock(nn.Module):
  """Pre-LN causal self-attention, optional cross-attention, MLP."""
  features: int
  num_heads: int
  mlp_dim: int
  cross: bool  # has a cross-attention to the memory
  dropout: float = 0.0
  dtype: Dtype = jnp.float32
  kernels: kernels_lib.Kernels = kernels_lib.FLAX

  def setup(self):
    attention = lambda: Attention(self.features, self.num_heads, self.dropout,
                                  self.dtype, self.kernels)
    self.self_norm = nn.LayerNorm(dtype=self.dtype)
    self.self_attention = attention()
    if self.cross:
      self.memory_norm = nn.LayerNorm(dtype=self.dtype)
      self.cross_norm = nn.LayerNorm(dtype=self.dtype)
      self.cross_attention = attention()
    self.mlp_norm = nn.LayerNorm(dtype=self.dtype)
    self.mlp = layers.MlpBlock(self.mlp_dim, self.dropout, self.dtype)
    self.drop = nn.Dropout(self.dropout)

  def memory_keys_values(self, memory_BxMxD):
    """The cross-attention's keys and values, in the cache's layouts."""
    return to_cache(*self.cross_attention.keys_values(
        self.memory_norm(memory_BxMxD)))

  def __call__(self, x_BxTxD, mask_Bx1xTxS, *, cache=None, index_B=None,
               memory=None, train=False):
    """(x, {'k', 'v'}): without a cache the keys are the T tokens' own; with
    one they are written into it from slot `index_B` and it is attended.
    `memory`: ({'k', 'v'}, mask_BxM) for the cross-attention. Keys and
    values are returned in the cache's layouts."""
    drop = lambda y: self.drop(y, deterministic=not train)
    y_BxTxD = self.self_norm(x_BxTxD)
    kv = to_cache(*self.self_attention.keys_values(y_BxTxD))
    if cache is not None:
      kv = {'k': write(cache['k'], kv['k'], index_B, axis=3),
            'v': write(cache['v'], kv['v'], index_B, axis=2)}
    k, v = from_cache(kv)
    x_BxTxD = x_BxTxD + drop(self.self_attention(y_BxTxD, k, v, mask_Bx1xTxS,
                                                 train))
    if self.cross:
      memory_kv, memory_mask_BxM = memory
      mk, mv = from_cache(memory_kv)
      t = x_BxTxD.shape[1]
      mask = jnp.broadcast_to(memory_mask_BxM[:, None, None],
                              (memory_mask_BxM.shape[0], 1, t,
                               memory_mask_BxM.shape[1]))
      y_BxTxD = self.cross_attention(self.cross_norm(x_BxTxD), mk, mv, mask,
                                     train)
      # An example whose memory is all padding gets no cross-attention.
      has_B = jnp.any(memory_mask_BxM, axis=1)
      x_BxTxD = x_BxTxD + jnp.where(has_B[:, None, None], drop(y_BxTxD), 0)
    y_BxTxD = self.mlp(self.mlp_norm(x_BxTxD), train=train)
    return x_BxTxD + drop(y_BxTxD), kv


class Decoder(nn.Module):
  """Autoregressive Transformer decoder conditioned on a memory (above)."""
  vocab_size: int
  features: int = 256  # D
  num_layers: int = 2
  num_heads: int = 4
  mlp_dim: int | None = None  # None: 4 * features
  conditioning: str = 'cross_attention'  # or 'prefix'
  prefix_lm: bool = False  # prefix only: the prefix sees itself fully
  positions: str = 'learned'  # or 'sincos' (text positions only)
  max_positions: int = 128  # longest text (prompt + generation)
  tie_embedding: bool = True  # logits from the token embedding (T5)
  pad_id: int = 0
  dropout: float = 0.0
  dtype: Dtype = jnp.float32
  kernels: kernels_lib.Kernels = kernels_lib.FLAX

  def setup(self):
    if self.conditioning not in CONDITIONINGS:
      raise errors.unknown_name('decoder conditioning', self.conditioning,
                                CONDITIONINGS)
    if self.positions not in POSITIONS:
      raise errors.unknown_name('decoder positions', self.positions,
                                POSITIONS)
    d = self.features
    self.embed = nn.Embed(self.vocab_size, d, dtype=self.dtype,
                          embedding_init=nn.initializers.normal(1.0))
    if self.positions == 'learned':
      self.pos_embedding = self.param(
          'pos_embedding', nn.initializers.normal(0.02),
          (self.max_positions, d))
    if self.conditioning == 'prefix':
      self.memory_proj = nn.Dense(d, dtype=self.dtype)
    self.blocks = [
        DecoderBlock(d, self.num_heads, self.mlp_dim or 4 * d,
                     self.conditioning == 'cross_attention', self.dropout,
                     self.dtype, self.kernels)
        for _ in range(self.num_layers)]
    self.norm = nn.LayerNorm(dtype=self.dtype)
    if not self.tie_embedding:
      self.head = nn.Dense(self.vocab_size, dtype=self.dtype)

  # ------------------------------------------------------------- Parts ---
  def _check_length(self, n: int):
    if n > self.max_positions:
      raise errors.UserError(
          f'a text of {n} tokens is longer than the decoder\'s '
          f'max_positions={self.max_positions}; raise max_positions to at '
          f'least {n} or shorten max_length.')

  def _embed_text(self, tokens_BxT, positions_BxT):
    x_BxTxD = self.embed(tokens_BxT)
    if self.positions == 'learned':
      pos_BxTxD = jnp.take(self.pos_embedding, positions_BxT, axis=0)
    else:
      table = layers.sincos_posemb(self.max_positions, self.features)
      pos_BxTxD = jnp.take(table, positions_BxT, axis=0)
    return x_BxTxD + pos_BxTxD.astype(x_BxTxD.dtype)

  def _logits(self, x_BxTxD):
    y_BxTxD = self.norm(x_BxTxD)
    if self.tie_embedding:  # scaled as T5 does with a shared embedding
      return self.embed.attend(y_BxTxD * self.features ** -0.5)
    return self.head(y_BxTxD)

  def _memory(self, memory, memory_mask):
    """Per block ({'k', 'v'}, mask) for the cross-attention, or None."""
    if self.conditioning != 'cross_attention':
      return [None] * self.num_layers
    return [(blk.memory_keys_values(memory), memory_mask)
            for blk in self.blocks]

  def _prefix_mask(self, m: int, l: int, valid_BxS):
    """Self-attention mask of [prefix; text] in the teacher-forced call."""
    slot_BxT = jnp.broadcast_to(jnp.arange(m + l), valid_BxS.shape)
    if self.prefix_lm and m:  # every prefix query sees the whole prefix
      slot_BxT = jnp.maximum(slot_BxT, m - 1)
    return causal_mask(slot_BxT, valid_BxS)

  # ------------------------------------------------------------- Calls ---
  def __call__(self, tokens_BxL, memory, memory_mask=None, *, train=False):
    """Teacher-forced logits_BxLxV: position l sees tokens <= l."""
    b, l = tokens_BxL.shape
    self._check_length(l)
    memory, memory_mask = as_tokens(memory, memory_mask)
    x_BxSxD = self._embed_text(tokens_BxL,
                               jnp.broadcast_to(jnp.arange(l), (b, l)))
    valid_BxS = tokens_BxL != self.pad_id
    m = 0
    if self.conditioning == 'prefix':
      m = memory.shape[1]
      x_BxSxD = jnp.concatenate(
          [self.memory_proj(memory).astype(x_BxSxD.dtype), x_BxSxD], axis=1)
      valid_BxS = jnp.concatenate([memory_mask, valid_BxS], axis=1)
    mask = self._prefix_mask(m, l, valid_BxS)
    for blk, mem in zip(self.blocks, self._memory(memory, memory_mask)):
      x_BxSxD, _ = blk(x_BxSxD, mask, memory=mem, train=train)
    return self._logits(x_BxSxD[:, m:])

  def init_cache(self, memory, memory_mask=None, *, max_length: int):
    """An empty cache for `max_length` text tokens, conditioned on the
    memory: its cross-attention keys/values, or the prefix run through.
    Behind an optimization barrier, so that the compiler keeps the cache in
    its layouts rather than transposing the memory's keys anew at every
    step of a decoding loop (it did, on XLA:CPU)."""
    self._check_length(max_length)
    memory, memory_mask = as_tokens(memory, memory_mask)
    b = memory.shape[0]
    k = self.features // self.num_heads
    empty = to_cache(*[jnp.zeros((b, max_length, self.num_heads, k),
                                 self.dtype)] * 2)
    index_B = jnp.zeros((b,), jnp.int32)
    valid_BxS = jnp.zeros((b, max_length), jnp.bool_)
    cache = {'position_B': index_B}
    if self.conditioning == 'cross_attention':
      blocks = [{**empty, 'memory_k': mkv['k'], 'memory_v': mkv['v']}
                for mkv, _ in self._memory(memory, memory_mask)]
      cache['memory_mask_BxM'] = memory_mask
    else:
      x_BxMxD = self.memory_proj(memory)
      m = x_BxMxD.shape[1]
      mask = self._prefix_mask(m, 0, memory_mask)
      pad = lambda x, axis: jnp.pad(x, [(0, max_length if a == axis else 0)
                                        for a in range(4)])
      blocks = []
      for blk in self.blocks:
        x_BxMxD, kv = blk(x_BxMxD, mask)
        blocks.append({'k': pad(kv['k'], 3), 'v': pad(kv['v'], 2)})
      valid_BxS = jnp.concatenate([memory_mask, valid_BxS], axis=1)
      index_B = index_B + m
    cache.update(blocks=tuple(blocks), valid_BxS=valid_BxS, index_B=index_B)
    return lax.optimization_barrier(cache)

  def extend(self, tokens_BxT, cache):
    """(logits_BxTxV, cache) with T more tokens per row appended; padding
    tokens (trailing) take no slot, so rows advance by their real count."""
    t = tokens_BxT.shape[1]
    index_B, position_B = cache['index_B'], cache['position_B']
    real_BxT = tokens_BxT != self.pad_id
    x_BxTxD = self._embed_text(tokens_BxT, position_B[:, None] + jnp.arange(t))
    valid_BxS = write(cache['valid_BxS'], real_BxT, index_B)
    mask = causal_mask(index_B[:, None] + jnp.arange(t), valid_BxS)
    blocks = []
    for blk, c in zip(self.blocks, cache['blocks']):
      mem = None
      if 'memory_k' in c:
        mem = ({'k': c['memory_k'], 'v': c['memory_v']},
               cache['memory_mask_BxM'])
      x_BxTxD, kv = blk(x_BxTxD, mask, cache=c, index_B=index_B, memory=mem)
      blocks.append({**c, **kv})
    n_B = jnp.sum(real_BxT, axis=1, dtype=jnp.int32)
    cache = {**cache, 'blocks': tuple(blocks), 'valid_BxS': valid_BxS,
             'index_B': index_B + n_B, 'position_B': position_B + n_B}
    return self._logits(x_BxTxD), cache


def stepper(decoder: Decoder, variables, memory, memory_mask=None, *,
            max_length: int):
  """(step, cache) for `mmfusion.nn.decoding`: `step(tokens_BxT, cache) ->
  (logits_BxTxV, cache)` runs `Decoder.extend` with `variables`, and the
  cache, conditioned on the memory, holds `max_length` text tokens."""
  cache = decoder.apply(variables, memory, memory_mask, max_length=max_length,
                        method=Decoder.init_cache)
  step = lambda tokens, c: decoder.apply(variables, tokens, c,
                                         method=Decoder.extend)
  return step, cache
