"""`multilabel`: any number of C labels per example, sigmoid cross-entropy.

The loss is the mean over labels of the binary cross-entropy of each label's
logit (AudioSet in MBT, Nagrani et al. 2021; MM-IMDb's 23 genres, Arevalo et
al. 2017), with `class_balanced` weighting each label's positives by its
negatives-to-positives ratio in the train split. Metrics: mAP (macro, as
scenic's MBT reports it, and micro), micro- and macro-F1 at probability 0.5,
and each label's AP (`ap/<label>`). `predict` returns each label's
probability and the labels at 0.5 or above.

Missing: as classification, every example is scored whatever is absent.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from mmfusion.tasks import base
from mmfusion.tasks import metrics


def weighted_bce(logits_BxC, labels_BxC, pos_weight_C=None):
  """Mean binary cross-entropy over B x C; positives weighted by
  `pos_weight_C` (torch's BCEWithLogits `pos_weight`)."""
  pos = jax.nn.softplus(-logits_BxC)  # -log sigmoid(x)
  neg = jax.nn.softplus(logits_BxC)  # -log (1 - sigmoid(x))
  w = 1.0 if pos_weight_C is None else pos_weight_C
  return jnp.mean(w * labels_BxC * pos + (1 - labels_BxC) * neg)


def batch_micro_f1(logits_BxC, labels_BxC):
  """Micro-F1 of one batch at probability 0.5 (logit 0)."""
  pred = (logits_BxC >= 0).astype(jnp.float32)
  tp = jnp.sum(pred * labels_BxC)
  wrong = jnp.sum(jnp.abs(pred - labels_BxC))
  return 2 * tp / jnp.maximum(2 * tp + wrong, 1.0)


@dataclasses.dataclass(frozen=True)
class Multilabel(base.Task):
  class_balanced: bool = False  # weight positives by the train split's rarity

  NAME = 'multilabel'
  TARGETS = ('labels',)
  METRICS = {'map': 'max', 'map_micro': 'max', 'micro_f1': 'max',
             'macro_f1': 'max', 'loss': 'min'}
  PRIMARY = 'map'
  TRAIN_METRIC = 'micro_f1'
  TABLE = ('map', 'map_micro', 'micro_f1', 'macro_f1', 'loss', 'examples')

  @property
  def stats(self) -> tuple[str, ...]:
    return ('labels',) if self.class_balanced else ()

  @property
  def names(self) -> list[str]:
    return list(self.data.targets['labels']['names'])

  @property
  def num_outputs(self) -> int:
    return len(self.names)

  def chance(self):
    """mAP of constant scores: each label's AP is its rate of positives."""
    info = self.data.targets['labels']
    if 'positives' not in info:
      return None
    return float(np.mean(np.asarray(info['positives']) / info['examples']))

  def pos_weight(self):
    """[C] negatives / positives of each label in the train split."""
    info = self.data.targets['labels']
    pos_C = np.maximum(np.asarray(info['positives'], np.float32), 1.0)
    return (info['examples'] - pos_C) / pos_C

  def loss(self, logits_BxC, batch):
    labels_BxC = batch['labels']
    w_C = jnp.asarray(self.pos_weight()) if self.class_balanced else None
    return (weighted_bce(logits_BxC, labels_BxC, w_C),
            {'micro_f1': batch_micro_f1(logits_BxC, labels_BxC)})

  def outputs(self, logits_BxC):
    return {'probabilities': jax.nn.sigmoid(logits_BxC.astype(jnp.float32))}

  def scores(self, gathered, targets, *, detail=True):
    logits_NxC, labels_NxC = gathered['out'], targets['labels']
    out = metrics.multilabel(logits_NxC, labels_NxC)
    if detail:
      ap_C = metrics.per_class_ap(logits_NxC, labels_NxC)
      out.update({f'ap/{n}': float(a) for n, a in zip(self.names, ap_C)})
    return out

  def rows(self, outputs, ids):
    names = self.names
    return [{'id': base.plain(i),
             'prediction': [n for n, p in zip(names, p_C) if p >= 0.5],
             'probabilities': dict(zip(names, map(float, p_C)))}
            for i, p_C in zip(ids, outputs['probabilities'])]
