"""`classification`: one class per example, softmax cross-entropy on `label`.

Metrics: loss (mean cross-entropy), accuracy, macro-F1 (over the classes
that occur in the predictions or labels), and for two classes the AUROC of
the positive class. Every late fusion method applies. `predict` returns each
class's probability.

Missing: an example whose modalities are all absent still gets a prediction
(the fusion module's output for no input) and is scored.
"""

import dataclasses

import jax
import jax.numpy as jnp
import optax

from mmfusion import fusion as fusion_lib
from mmfusion.tasks import base
from mmfusion.tasks import metrics


@dataclasses.dataclass(frozen=True)
class Classification(base.Task):
  NAME = 'classification'
  TARGETS = ('label',)
  METRICS = {'accuracy': 'max', 'macro_f1': 'max', 'auroc': 'max',
             'loss': 'min'}
  PRIMARY = 'accuracy'
  TRAIN_METRIC = 'accuracy'
  TABLE = ('accuracy', 'macro_f1', 'loss', 'examples')
  LATE = tuple(fusion_lib.names_of('late'))

  @property
  def num_outputs(self) -> int:
    return self.data.num_classes

  def chance(self):
    return 1.0 / self.data.num_classes  # accuracy of a uniform guess

  def direction(self, metric):
    if metric == 'auroc' and self.data.num_classes != 2:
      return None  # reported for two classes only
    return super().direction(metric)

  def loss(self, logits_BxC, batch):
    label_B = batch['label']
    loss = optax.softmax_cross_entropy_with_integer_labels(
        logits_BxC, label_B).mean()
    return loss, {'accuracy': jnp.mean(logits_BxC.argmax(-1) == label_B)}

  def outputs(self, logits_BxC):
    return {'probabilities': jax.nn.softmax(logits_BxC.astype(jnp.float32))}

  def scores(self, gathered, targets, *, detail=True):
    return metrics.classification(gathered['out'], targets['label'])

  def rows(self, outputs, ids):
    classes = self.data.classes
    return [{'id': base.plain(i), 'prediction': classes[int(p_C.argmax())],
             'probabilities': dict(zip(classes, map(float, p_C)))}
            for i, p_C in zip(ids, outputs['probabilities'])]
