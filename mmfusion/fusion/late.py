"""Late (decision-level) fusion of per-modality class logits.

Each module maps {m: logits [B, C]} and presence to [B, C] logits or
log-probabilities, for a softmax cross-entropy. Decision-level fusion as in
Baltrušaitis, Ahuja & Morency, "Multimodal Machine Learning: A Survey and
Taxonomy", TPAMI 2019; product of experts after Hinton, "Training Products of
Experts by Minimizing Contrastive Divergence", Neural Computation 2002;
stacking after Wolpert, "Stacked Generalization", Neural Networks 1992.

Where no modality of an example is present, every rule below degrades to
uniform class probabilities (zero logits), never NaN.

Shape legend: B batch, C classes, M modalities.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmfusion.runtime import errors
from mmfusion.fusion import common

Dtype = Any


def stack_logits(logits, present, dtype):
  """([M, B, C] logits with absent rows set to 0, [M, B] presence)."""
  names = sorted(logits)
  shapes = {m: tuple(jnp.shape(logits[m])) for m in names}
  if len({s[1:] for s in shapes.values()}) > 1:
    raise errors.UserError(
        f'late fusion needs the same number of classes from every modality, '
        f'got logits of shapes {shapes}.')
  b = shapes[names[0]][0]
  p_MxB = jnp.stack([common.present_of(present, m, b) for m in names])
  l_MxBxC = jnp.stack([jnp.asarray(logits[m]) for m in names])
  return jnp.where(p_MxB[..., None], l_MxBxC, 0).astype(dtype), p_MxB


def included(p_MxB):
  """The present modalities, or all of them (zeroed) where none is present."""
  return p_MxB | ~jnp.any(p_MxB, axis=0, keepdims=True)


class LateLogits(nn.Module):
  """Mean of the present modalities' logits."""
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, logits, present, *, train: bool = False):
    l_MxBxC, p_MxB = stack_logits(logits, present, self.dtype)
    return common.present_mean(jnp.swapaxes(l_MxBxC, 0, 1), p_MxB.T)


class LateProbs(nn.Module):
  """log of the mean of the present modalities' class probabilities."""
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, logits, present, *, train: bool = False):
    l_MxBxC, p_MxB = stack_logits(logits, present, self.dtype)
    inc_MxB = included(p_MxB)
    logp_MxBxC = jnp.where(inc_MxB[..., None], nn.log_softmax(l_MxBxC), -jnp.inf)
    n_B = jnp.sum(inc_MxB, axis=0).astype(self.dtype)
    return jax.nn.logsumexp(logp_MxBxC, axis=0) - jnp.log(n_B)[:, None]


class LatePoE(nn.Module):
  """Product of experts: sum of the present modalities' log-softmaxes."""
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, logits, present, *, train: bool = False):
    l_MxBxC, p_MxB = stack_logits(logits, present, self.dtype)
    logp_MxBxC = jnp.where(p_MxB[..., None], nn.log_softmax(l_MxBxC), 0)
    return jnp.sum(logp_MxBxC, axis=0)


class LateWeighted(nn.Module):
  """Weighted mean of logits, softmax(w) over the present modalities.

  One learned score per modality (zero-init: the plain mean to start with).
  """
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, logits, present, *, train: bool = False):
    l_MxBxC, p_MxB = stack_logits(logits, present, self.dtype)
    m = l_MxBxC.shape[0]
    w_M = self.param('scores', nn.initializers.zeros, (m,)).astype(self.dtype)
    w_MxB = common.masked_softmax(
        jnp.broadcast_to(w_M[:, None], p_MxB.shape), p_MxB, axis=0)
    return jnp.einsum('mb,mbc->bc', w_MxB, l_MxBxC)


class LateStacking(nn.Module):
  """Stacking: an MLP meta-classifier over the modalities' predictions.

  Input: [q_1; ...; q_M; presence indicators], q_m = log softmax(logits_m)
  (`inputs='log_probs'`) or softmax(logits_m) (`'probs'`); an absent
  modality's q is a learned vector initialised to the uniform prediction.
  Trained end to end, the base classifiers learn only through the
  meta-classifier: through probabilities their gradient is scaled by
  p(1 - p), small at the start, and the model underfits (the av_digits_noisy
  report's notes measure it); through log-probabilities it is 1 - p.
  """
  hidden: int | None = 64  # None: a linear meta-classifier
  inputs: str = 'log_probs'  # or 'probs'
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, logits, present, *, train: bool = False):
    l_MxBxC, p_MxB = stack_logits(logits, present, self.dtype)
    m, _, c = l_MxBxC.shape
    if self.inputs == 'log_probs':
      base_MxBxC = nn.log_softmax(l_MxBxC)
      neutral = nn.initializers.constant(-jnp.log(c))
    elif self.inputs == 'probs':
      base_MxBxC = nn.softmax(l_MxBxC)
      neutral = nn.initializers.constant(1.0 / c)
    else:
      raise errors.UserError(
          f"late_stacking: inputs={self.inputs!r} is not one of 'log_probs', "
          "'probs'; set model.fusion_kwargs.inputs to one of them.")
    neutral_MxC = self.param('absent_probs', neutral, (m, c)).astype(self.dtype)
    probs_MxBxC = jnp.where(p_MxB[..., None], base_MxBxC,
                            neutral_MxC[:, None, :])
    h = jnp.concatenate(list(probs_MxBxC) + [p_MxB.T.astype(self.dtype)], -1)
    if self.hidden is not None:
      h = nn.relu(nn.Dense(self.hidden, dtype=self.dtype, name='hidden')(h))
    return nn.Dense(c, dtype=self.dtype, name='out')(h)
