"""Stock flax/JAX ops in the contracts of the kernel slots that flax has no
class for: attention (`attention_fn`) and depthwise convolution."""

import flax.linen as nn
import jax


def attention(query, key, value, mask=None, dropout_rng=None,
              dropout_rate=0.0, broadcast_dropout=True, deterministic=True,
              dtype=None):
  """`jax.nn.dot_product_attention` ([B, T, H, K] queries, [B, S, H, K] keys
  and values, bool mask broadcastable to [B, H, T, S]): XLA's on CPU, fused
  kernels where the backend has them. With attention dropout in training,
  flax's `nn.dot_product_attention` (JAX's has no dropout)."""
  if dropout_rate > 0.0 and not deterministic:
    return nn.dot_product_attention(
        query, key, value, mask=mask, dropout_rng=dropout_rng,
        dropout_rate=dropout_rate, broadcast_dropout=broadcast_dropout,
        deterministic=deterministic, dtype=dtype)
  if dtype is not None:
    query, key, value = (x.astype(dtype) for x in (query, key, value))
  return jax.nn.dot_product_attention(query, key, value, mask=mask)


def depthwise_conv(features: int, kernel_size, strides=1, padding='SAME',
                   **kwargs) -> nn.Conv:
  """nn.Conv over `features` channels, one filter each (feature_group_count
  = features): parameters `kernel` [kh, kw, 1, features] (and `bias`)."""
  return nn.Conv(features, kernel_size, strides, padding=padding,
                 feature_group_count=features, **kwargs)
