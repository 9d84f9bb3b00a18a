"""Classification metrics computed on the host from gathered predictions.

Shape legend: N examples, C classes.
"""

import numpy as np
import scipy.stats


def log_softmax(logits_NxC):
  z = logits_NxC - logits_NxC.max(axis=-1, keepdims=True)
  return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def macro_f1(pred_N, label_N, num_classes: int) -> float:
  """Unweighted mean of per-class F1 over classes that occur in pred or label."""
  f1s = []
  for c in range(num_classes):
    tp = np.sum((pred_N == c) & (label_N == c))
    fp = np.sum((pred_N == c) & (label_N != c))
    fn = np.sum((pred_N != c) & (label_N == c))
    if tp + fp + fn:
      f1s.append(2 * tp / (2 * tp + fp + fn))
  return float(np.mean(f1s)) if f1s else 0.0


def classification(logits_NxC, label_N) -> dict:
  """Loss (mean cross-entropy), accuracy and macro-F1 of `logits_NxC`."""
  logits_NxC = np.asarray(logits_NxC, np.float64)
  label_N = np.asarray(label_N)
  pred_N = logits_NxC.argmax(axis=-1)
  nll_N = -np.take_along_axis(log_softmax(logits_NxC), label_N[:, None], -1)
  out = {
      'loss': float(nll_N.mean()),
      'accuracy': float(np.mean(pred_N == label_N)),
      'macro_f1': macro_f1(pred_N, label_N, logits_NxC.shape[-1]),
      'examples': int(label_N.shape[0]),
  }
  if logits_NxC.shape[-1] == 2:  # binary: AUROC of the positive class
    out['auroc'] = auroc(logits_NxC[:, 1] - logits_NxC[:, 0], label_N == 1)
  return out


def auroc(score_N, positive_N) -> float:
  """Area under the ROC curve by the rank-sum (Mann-Whitney U) formula."""
  positive_N = np.asarray(positive_N, bool)
  n_pos, n_neg = positive_N.sum(), (~positive_N).sum()
  if n_pos == 0 or n_neg == 0:
    return float('nan')
  ranks_N = scipy.stats.rankdata(score_N)  # ties share their mean rank
  u = ranks_N[positive_N].sum() - n_pos * (n_pos + 1) / 2
  return float(u / (n_pos * n_neg))
