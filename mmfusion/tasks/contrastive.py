"""`contrastive`: two towers aligned over the global batch (CLIP, SigLIP).

Each tower is one modality or a fused group of them (`towers`, e.g.
(('video',), ('audio',)) or (('image', 'text'), ('audio',))): its encoders,
the run's fusion method over them and a linear projection to `width`,
L2-normalised. Example i's two towers are a positive pair; every other
example's other tower is a negative, across the whole global batch: the
embeddings are gathered over the mesh's data axis inside the jitted step (a
sharding constraint to replicated), so 8 devices or 2 processes see the
negatives one device would.

Losses (`loss_fn`): `infonce`, the symmetric cross-entropy of CLIP (Radford
et al. 2021) with a learnable temperature, initialised to 1/0.07 and capped
at 100; `siglip`, the pairwise sigmoid loss of SigLIP (Zhai et al. 2023) with
a learnable temperature (init 10) and bias (init -10), summed over pairs and
divided by the batch, as big_vision's siglip trainer does. Metrics, from the
similarities of the whole split: recall@1/5/10 in both directions
(`a_to_b/...`, `b_to_a/...`, and their mean `recall@K`) and median rank.

Zero-shot classification (`zero_shot`, where the data has class names and
tower b is byte-tokenised text alone): each class's prompt
(`prompt.format(class name)`) is embedded by tower b, and each example's
tower-a embedding is classified by the nearest prompt (`zero_shot_accuracy`,
scored against `label`, which training never reads).

Missing: an example with no modality present in a tower takes no part in the
loss (neither as a positive nor as a negative) and is not scored.
"""

import dataclasses
import math
from typing import Literal

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mmfusion import models
from mmfusion import sharding
from mmfusion.runtime import errors
from mmfusion.tasks import base
from mmfusion.tasks import metrics

MAX_LOG_SCALE = math.log(100.0)  # CLIP caps its logit scale at 100
INIT = {'infonce': (math.log(1 / 0.07), None), 'siglip': (math.log(10.0), -10.0)}
SIDES = ('a', 'b')


def unit(z_BxD):
  """Rows scaled to unit length; a zero row (a tower whose modalities are all
  absent) stays zero with finite gradients, which `z / norm(z)` lacks."""
  sq_Bx1 = jnp.sum(jnp.square(z_BxD), axis=-1, keepdims=True)
  return z_BxD * jax.lax.rsqrt(jnp.maximum(sq_Bx1, 1e-24))


class TwoTowers(nn.Module):
  """Two MultimodalModels whose heads project to the shared width; returns
  ({'a', 'b': unit [B, D], 'present_a', 'present_b': [B], 'log_scale',
  'bias'}, aux)."""
  tower_a: nn.Module
  tower_b: nn.Module
  init_log_scale: float
  init_bias: float | None = None  # SigLIP's; None: no bias
  prompts: tuple | None = None  # [C][L] token ids of class prompts (tower b)

  @property
  def kernels(self):
    """The op set both towers were built with (what `mmfusion.cost` names)."""
    return self.tower_a.kernels

  @nn.compact
  def __call__(self, batch, *, train: bool = False):
    out, aux = {}, {}
    for side, tower in zip(SIDES, (self.tower_a, self.tower_b)):
      z_BxD, tower_aux = tower(batch, train=train)
      out[side] = unit(z_BxD)
      present = [models.present_of(batch, m) for m in tower.encoders]
      out[f'present_{side}'] = jnp.any(jnp.stack(present), axis=0)
      aux.update({k: v for k, v in tower_aux.items()
                  if k != 'embedding/fused'})
      aux[f'embedding/{side}'] = out[side]
    if self.prompts is not None:  # zero-shot: the classes' text, tower b
      tokens_CxL = jnp.asarray(self.prompts, jnp.int32)
      (m,) = self.tower_b.encoders
      p_CxD, _ = self.tower_b({m: tokens_CxL}, train=False)
      p_CxD = p_CxD / jnp.maximum(
          jnp.linalg.norm(p_CxD, axis=-1, keepdims=True), 1e-12)
      out['zero_shot'] = out['a'] @ p_CxD.T  # [B, C] cosine similarities
    log_scale = self.param('log_scale', nn.initializers.constant(
        self.init_log_scale), ())
    out['log_scale'] = jnp.minimum(log_scale, MAX_LOG_SCALE)
    out['bias'] = (self.param('bias', nn.initializers.constant(
        self.init_bias), ()) if self.init_bias is not None else
                   jnp.zeros(()))
    return out, aux


def infonce(logits_BxB, valid_B):
  """Symmetric InfoNCE over the valid rows and columns of `logits_BxB`
  (positives on the diagonal)."""
  pair = valid_B[:, None] & valid_B[None, :]
  masked = jnp.where(pair, logits_BxB, -1e9)  # finite: no NaN gradients
  diag = jnp.diagonal(logits_BxB)
  rows = jax.nn.logsumexp(masked, axis=1) - diag
  cols = jax.nn.logsumexp(masked, axis=0) - diag
  n = jnp.maximum(valid_B.sum(), 1)
  per = jnp.where(valid_B, (rows + cols) / 2, 0.0)
  return per.sum() / n


def siglip(logits_BxB, valid_B):
  """SigLIP's loss: -sum of log sigmoid(z_ij * logit_ij) over valid pairs
  (z = +1 on the diagonal, -1 elsewhere), divided by the valid rows."""
  b = logits_BxB.shape[0]
  z = 2 * jnp.eye(b, dtype=logits_BxB.dtype) - 1
  pair = valid_B[:, None] & valid_B[None, :]
  terms = jnp.where(pair, -jax.nn.log_sigmoid(z * logits_BxB), 0.0)
  return terms.sum() / jnp.maximum(valid_B.sum(), 1)


@dataclasses.dataclass(frozen=True)
class Contrastive(base.Task):
  towers: tuple[tuple[str, ...], tuple[str, ...]] = (('image',), ('text',))
  loss_fn: Literal['infonce', 'siglip'] = 'infonce'
  width: int = 128  # the shared embedding width
  zero_shot: bool = False  # classify tower a by the nearest class prompt
  prompt: str = '{}'  # a class's prompt, from its name

  NAME = 'contrastive'
  METRICS = {f'{d}recall@{k}': 'max' for d in ('', 'a_to_b/', 'b_to_a/')
             for k in (1, 5, 10)}
  METRICS.update({'a_to_b/median_rank': 'min', 'b_to_a/median_rank': 'min',
                  'median_rank': 'min', 'zero_shot_accuracy': 'max'})
  PRIMARY = 'recall@1'
  TRAIN_METRIC = 'accuracy'  # in-batch: the positive has the top logit
  TABLE = ('recall@1', 'recall@5', 'recall@10', 'median_rank', 'examples')
  SUBSETS = False

  @property
  def num_outputs(self) -> int:
    return self.width

  def direction(self, metric):
    if metric == 'zero_shot_accuracy' and not self.zero_shot:
      return None
    return super().direction(metric)

  @property
  def TARGETS(self):  # pylint: disable=invalid-name
    return ('label',) if self.zero_shot else ()

  def check_data(self, data):
    a, b = self.towers
    if self.zero_shot and (
        'label' not in data.targets or tuple(b) != ('text',) or
        data.preprocessing.get('text', {}).get('tokenizer') != 'bytes'):
      raise errors.UserError(
          'task.zero_shot needs class names (a label) and tower b = '
          f'(\'text\',) of byte tokens; {data.name} with towers '
          f'{self.towers!r} has not; set --config.task.zero_shot=False.')
    where = '--config.task.towers'
    if not a or not b:
      raise errors.UserError(
          f'task.towers={self.towers!r} leaves a tower empty; give each '
          f'tower one or more modalities, e.g. {where}="((\'video\',), '
          f'(\'audio\',))".')
    both = sorted(set(a) & set(b))
    if both:
      raise errors.UserError(
          f'task.towers puts {", ".join(both)} in both towers; give each '
          f'modality to one tower ({where}).')
    named = set(a) | set(b)
    unknown = sorted(named - set(data.modalities))
    if unknown:
      raise errors.UserError(
          f'task.towers names {", ".join(unknown)}, which data.modalities '
          f'{tuple(data.modalities)} does not have; add it there or fix '
          f'{where}.')
    unused = [m for m in data.modalities if m not in named]
    if unused:
      raise errors.UserError(
          f'data.modalities has {", ".join(unused)}, which no tower of '
          f'task.towers uses; add it to a tower or drop it from '
          f'data.modalities.')

  def model(self, model_config):
    init_log_scale, init_bias = INIT[self.loss_fn]
    towers = [models.from_config(model_config, self.width, modalities=mods)
              for mods in self.towers]
    return TwoTowers(*towers, init_log_scale=init_log_scale,
                     init_bias=init_bias, prompts=self._prompts())

  def _prompts(self):
    """[C][L] byte tokens of the class prompts, or None."""
    if not self.zero_shot:
      return None
    from mmfusion.data import tokenizer  # pylint: disable=g-import-not-at-top
    (length,) = self.data.inputs['text'][0]
    ids = tokenizer.ByteTokenizer().encode(
        [self.prompt.format(c) for c in self.data.classes], length)
    return tuple(tuple(int(i) for i in row) for row in ids)

  def _global(self, x):
    """`x` whole on every device: the global batch's negatives."""
    if self.mesh is None:
      return x
    return jax.lax.with_sharding_constraint(x, sharding.replicated(self.mesh))

  def logits(self, out):
    """[B, B] logits of the global batch and its valid pairs [B]."""
    a, b = self._global(out['a']), self._global(out['b'])
    valid_B = self._global(out['present_a'] & out['present_b'])
    logits = jnp.exp(out['log_scale']) * (a @ b.T) + out['bias']
    return logits.astype(jnp.float32), valid_B

  def loss(self, out, batch):
    logits_BxB, valid_B = self.logits(out)
    fn = infonce if self.loss_fn == 'infonce' else siglip
    hit = logits_BxB.argmax(-1) == jnp.arange(logits_BxB.shape[0])
    accuracy = jnp.sum(hit & valid_B) / jnp.maximum(valid_B.sum(), 1)
    return fn(logits_BxB, valid_B), {'accuracy': accuracy}

  def per_example(self, out, batch):
    keys = ('a', 'b', 'present_a', 'present_b') + (
        ('zero_shot',) if self.zero_shot else ())
    return {k: out[k] for k in keys}

  def outputs_of(self, gathered):
    return self.outputs(gathered)

  def outputs(self, out):
    return {'present_a': out['present_a'], 'present_b': out['present_b']}

  def scores(self, gathered, targets, *, detail=True):
    keep = np.asarray(gathered['present_a']) & np.asarray(
        gathered['present_b'])
    a = np.asarray(gathered['a'], np.float32)[keep]
    b = np.asarray(gathered['b'], np.float32)[keep]
    out = metrics.retrieval(a @ b.T)
    for k in (1, 5, 10):
      out[f'recall@{k}'] = (out[f'a_to_b/recall@{k}'] +
                            out[f'b_to_a/recall@{k}']) / 2
    out['median_rank'] = (out['a_to_b/median_rank'] +
                          out['b_to_a/median_rank']) / 2
    if self.zero_shot:  # every example with tower a present
      hit = np.asarray(gathered['zero_shot']).argmax(-1) == targets['label']
      out['zero_shot_accuracy'] = float(
          hit[np.asarray(gathered['present_a'])].mean())
    return out

  def mean_outputs(self, outputs_K):
    return {k: v.all(0) if k.startswith('present') else v.mean(0)
            for k, v in outputs_K.items()}

  def rows(self, outputs, ids):
    return [{'id': base.plain(i), 'present': {
        'a': bool(pa), 'b': bool(pb)}}
            for i, pa, pb in zip(ids, outputs['present_a'],
                                 outputs['present_b'])]
