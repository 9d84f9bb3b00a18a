"""`regression`: R continuous targets, L1 or squared error.

Targets are standardised with the train split's mean and std (`standardize`),
so one learning rate suits any scale; the head predicts standardised values
and everything reported is in the targets' own units. Metrics: MAE, RMSE,
Pearson r and Spearman rho (means over targets; per target with `detail`),
and with `sentiment` the CMU-MOSI conventions of MulT (Tsai et al. 2019) on
the first target, for sentiment in [-3, 3]: Acc-2 (sign, zero targets left
out), its F1, Acc-7 (rounded and clipped). MultiBench trains MOSI this way
with L1 (Liang et al. 2021). Late fusion: the (weighted) mean of the
per-modality predictions.

Missing: as classification, every example is scored whatever is absent.
"""

import dataclasses
from typing import Literal

import jax.numpy as jnp
import numpy as np

from mmfusion.tasks import base
from mmfusion.tasks import metrics


@dataclasses.dataclass(frozen=True)
class Regression(base.Task):
  loss_fn: Literal['l1', 'mse'] = 'l1'  # MultiBench's MOSI uses L1
  standardize: bool = True  # with the train split's mean and std
  sentiment: bool = False  # also MOSI's Acc-2, F1 and Acc-7 of target 0

  NAME = 'regression'
  TARGETS = ('target',)
  METRICS = {'mae': 'min', 'rmse': 'min', 'pearson': 'max',
             'spearman': 'max', 'loss': 'min', 'acc2': 'max', 'f1_2': 'max',
             'acc7': 'max'}
  PRIMARY = 'mae'
  TRAIN_METRIC = 'mae'
  TABLE = ('mae', 'rmse', 'pearson', 'spearman', 'examples')

  @property
  def stats(self) -> tuple[str, ...]:
    return ('target',) if self.standardize else ()

  @property
  def names(self) -> list[str]:
    return list(self.data.targets['target']['names'])

  @property
  def num_outputs(self) -> int:
    return len(self.names)

  def direction(self, metric):
    if metric in ('acc2', 'f1_2', 'acc7') and not self.sentiment:
      return None
    return super().direction(metric)

  def scale(self):
    """(mean [R], std [R]) that standardise the targets."""
    if not self.standardize:
      return np.zeros(self.num_outputs, np.float32), np.ones(
          self.num_outputs, np.float32)
    info = self.data.targets['target']
    std = np.asarray(info['std'], np.float32)
    return (np.asarray(info['mean'], np.float32),
            np.where(std > 0, std, 1.0).astype(np.float32))

  def _error(self, z_BxR, t_BxR):
    err = z_BxR - t_BxR
    return jnp.abs(err) if self.loss_fn == 'l1' else jnp.square(err)

  def loss(self, z_BxR, batch):
    mean_R, std_R = self.scale()
    t_BxR = (batch['target'] - mean_R) / std_R
    mae = jnp.mean(jnp.abs(z_BxR - t_BxR) * std_R)
    return jnp.mean(self._error(z_BxR, t_BxR)), {'mae': mae}

  def outputs(self, z_BxR):
    mean_R, std_R = self.scale()
    return {'values': z_BxR.astype(jnp.float32) * std_R + mean_R}

  def scores(self, gathered, targets, *, detail=True):
    mean_R, std_R = self.scale()
    z_NxR = np.asarray(gathered['out'], np.float64)
    t_NxR = np.asarray(targets['target'], np.float64)
    pred_NxR = z_NxR * std_R + mean_R
    err = z_NxR - (t_NxR - mean_R) / std_R
    out = metrics.regression(pred_NxR, t_NxR,
                             names=self.names if detail else None)
    out['loss'] = float(np.mean(np.abs(err) if self.loss_fn == 'l1'
                                else np.square(err)))
    if self.sentiment:
      mosi = metrics.sentiment(pred_NxR[:, 0], t_NxR[:, 0])
      out.update({k: mosi[k] for k in ('acc2', 'f1_2', 'acc7')})
    return out

  def rows(self, outputs, ids):
    names = self.names
    return [{'id': base.plain(i),
             'prediction': dict(zip(names, map(float, v_R)))}
            for i, v_R in zip(ids, outputs['values'])]
