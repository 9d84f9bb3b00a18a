"""Helpers shared by the fusion modules: modality order, presence, pooling.

Absent inputs are removed with `jnp.where` before any arithmetic, so huge or
NaN values in a missing modality can never reach the output (0 * inf = nan).

Shape legend: B batch, T tokens, D width, M modalities.
"""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from mmfusion.runtime import errors
from mmfusion.nn import layers

Dtype = Any


def present_of(present, name: str, batch: int):
  """[B] bool presence of one modality; a missing key means always present."""
  p = None if present is None else present.get(name)
  if p is None:
    return jnp.ones((batch,), jnp.bool_)
  return jnp.asarray(p).astype(jnp.bool_).reshape(batch)


def clean_tokens(tokens, masks, present, dtype):
  """Per modality, in sorted order: (x_BxTxD, valid_BxT).

  `valid` is the token mask and-ed with presence; invalid tokens are set to 0.
  A pooled [B, D] input is read as one token.
  """
  out = {}
  for m in sorted(tokens):
    x = jnp.asarray(tokens[m])
    if x.ndim == 2:
      x = x[:, None, :]  # [B, 1, D]
    b, t = x.shape[:2]
    mask = None if masks is None else masks.get(m)
    mask_BxT = (jnp.ones((b, t), jnp.bool_) if mask is None
                else jnp.asarray(mask).astype(jnp.bool_).reshape(b, t))
    valid_BxT = mask_BxT & present_of(present, m, b)[:, None]
    x = jnp.where(valid_BxT[..., None], x, 0).astype(dtype)
    out[m] = (x, valid_BxT)
  return out


def pool(cleaned):
  """Masked mean over tokens of each modality: {m: [B, D_m]}."""
  return {m: layers.masked_mean(x, v) for m, (x, v) in cleaned.items()}


def width(features, widths) -> int:
  """The common width: `features`, or else the widest modality."""
  return int(features) if features is not None else int(max(widths))


def present_mean(x_BxMxF, p_BxM):
  """Mean over the present modalities (axis 1); zeros where none is."""
  keep = p_BxM.reshape(p_BxM.shape + (1,) * (x_BxMxF.ndim - 2))
  total = jnp.sum(jnp.where(keep, x_BxMxF, 0), axis=1)
  n = jnp.sum(p_BxM, axis=1).astype(x_BxMxF.dtype)
  return total / jnp.maximum(n, 1).reshape(n.shape + (1,) * (total.ndim - 1))


def masked_softmax(logits, include, axis: int):
  """Softmax over the included entries; all-excluded slices give zeros."""
  logits = jnp.where(include, logits, jnp.finfo(logits.dtype).min)
  return jnp.where(include, nn.softmax(logits, axis=axis), 0)


def choose_modality(method: str, field: str, value, names) -> str:
  """`value` if it names a modality, the first sorted one when None."""
  if value is None:
    return names[0]
  if value not in names:
    raise errors.UserError(
        f'fusion {method!r}: {field}={value!r} is not one of the modalities '
        f'{", ".join(names)}.')
  return value


OUTPUTS = ('pooled', 'tokens')


def check_output(method: str, output: str):
  """Fails in one sentence on an `output` the module cannot give."""
  if output not in OUTPUTS:
    raise errors.UserError(
        f'fusion {method!r}: output={output!r} is not one of '
        f'{", ".join(OUTPUTS)}.')


def concat_tokens(pairs):
  """([B, sum T, D], bool [B, sum T]) of (tokens, valid) pairs, in order."""
  return (jnp.concatenate([x for x, _ in pairs], axis=1),
          jnp.concatenate([v for _, v in pairs], axis=1))


def need_two(method: str, names):
  if len(names) < 2:
    raise errors.UserError(
        f'fusion {method!r} needs at least two modalities, got {list(names)}.')


def others(names, name):
  return [m for m in names if m != name]


class Missing(nn.Module):
  """Replaces absent examples of `x` ([B, D] or [B, T, D]) by a learned vector.

  The vector starts at zero, so an untrained model sees zero-imputation.
  """
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, present_B):
    emb_D = self.param('embedding', nn.initializers.zeros, (x.shape[-1],))
    keep = present_B.reshape(present_B.shape + (1,) * (x.ndim - 1))
    return jnp.where(keep, x, emb_D.astype(self.dtype))


def embed_tokens(cleaned, d: int, dtype):
  """Projects each modality's tokens to width d and adds sin-cos positions.

  Must be called inside a compact module; creates Dense `proj_<m>` per modality.
  """
  out = {}
  for m, (x, valid) in cleaned.items():
    x = nn.Dense(d, dtype=dtype, name=f'proj_{m}')(x)
    x = x + layers.sincos_posemb(x.shape[1], d, dtype)[None]  # [B, T, D]
    out[m] = (x, valid)
  return out
