"""Dot-product attention for XLA:CPU, its gradient written out.

flax's `attention_fn` contract ([B, T, H, K] queries, [B, S, H, K] keys and
values, a bool mask broadcastable to [B, H, T, S]), chosen by
`model.kernels='xla_cpu'`. Autodiff of softmax attention folds the softmax
gradient's transpose into a batched dot that contracts its left operand's
rows, which XLA:CPU runs several times slower than the same product on a
transposed copy; the backward here materializes those two transposes behind
`lax.optimization_barrier`. A `jax.custom_vjp`: reverse mode only.
Legend: B batch, T queries, S keys, H heads, K width per head.
"""

import jax
from jax import lax
import jax.numpy as jnp

from mmfusion.nn.kernels import stock


def _attention_weights(q_BxHxTxK, k_BxHxSxK, mask):
  logits_BxHxTxS = jnp.einsum('bhtk,bhsk->bhts', q_BxHxTxK, k_BxHxSxK) * (
      q_BxHxTxK.shape[-1] ** -0.5)
  if mask is not None:
    logits_BxHxTxS = jnp.where(mask, logits_BxHxTxS,
                               jnp.finfo(logits_BxHxTxS.dtype).min)
  return jax.nn.softmax(logits_BxHxTxS, axis=-1)


def _transposed(x_BxHxTxS):
  """[B, H, S, T], materialized: behind the barrier XLA cannot fold the
  transpose into the next dot's dimension numbers."""
  return lax.optimization_barrier(jnp.swapaxes(x_BxHxTxS, -1, -2))


@jax.custom_vjp
def _attend(q_BxHxTxK, k_BxHxSxK, v_BxHxSxK, mask):
  """softmax(q k^T / sqrt(K), masked) v, its gradient written out."""
  return _attend_fwd(q_BxHxTxK, k_BxHxSxK, v_BxHxSxK, mask)[0]


def _attend_fwd(q, k, v, mask):
  p_BxHxTxS = _attention_weights(q, k, mask)
  out = jnp.einsum('bhts,bhsk->bhtk', p_BxHxTxS, v)
  return out, (q, k, v, mask, p_BxHxTxS)


def _attend_bwd(res, dout_BxHxTxK):
  q, k, v, mask, p_BxHxTxS = res
  dv = jnp.einsum('bhst,bhtk->bhsk', _transposed(p_BxHxTxS),
                  dout_BxHxTxK)
  dp_BxHxTxS = jnp.einsum('bhtk,bhsk->bhts', dout_BxHxTxK, v)
  # Softmax: dlogits = p * (dp - sum_s p dp); masked logits get none.
  dlogits = p_BxHxTxS * (dp_BxHxTxS - jnp.sum(dp_BxHxTxS * p_BxHxTxS, -1,
                                               keepdims=True))
  if mask is not None:
    dlogits = jnp.where(mask, dlogits, 0)
  dlogits = dlogits * q.shape[-1] ** -0.5
  dq = jnp.einsum('bhts,bhsk->bhtk', dlogits, k)
  dk = jnp.einsum('bhst,bhtk->bhsk', _transposed(dlogits), q)
  return dq, dk, dv, None


_attend.defvjp(_attend_fwd, _attend_bwd)


def dot_product_attention(query, key, value, mask=None, dropout_rng=None,
                          dropout_rate=0.0, broadcast_dropout=True,
                          deterministic=True, dtype=None):
  """nn.dot_product_attention ([B, T, H, K] queries, [B, S, H, K] keys and
  values, mask broadcastable to [B, H, T, S]) with its gradient written out
  (`_attend`). With attention dropout in training, flax's own."""
  if dropout_rate > 0.0 and not deterministic:
    return stock.attention(query, key, value, mask, dropout_rng, dropout_rate,
                           broadcast_dropout, deterministic, dtype)
  if dtype is not None:
    query, key, value = (x.astype(dtype) for x in (query, key, value))
  heads_first = lambda x_BxTxHxK: jnp.swapaxes(x_BxTxHxK, 1, 2)
  out_BxHxTxK = _attend(heads_first(query), heads_first(key),
                        heads_first(value), mask)
  return heads_first(out_BxHxTxK)


