"""Host-side evaluation metrics of each task, on gathered numpy predictions.

Every function returns plain Python floats (and `examples`, an int) in a dict;
undefined values (a class with no positives, a constant column) are nan.
scikit-learn and scipy are imported inside the functions: importing them costs
about a second of command-line start-up.

Shape legend: N examples, C classes or labels, R regression targets, D width.
"""

import numpy as np

RECALL_AT = (1, 5, 10)


def log_softmax(logits_NxC):
  z_NxC = logits_NxC - logits_NxC.max(axis=-1, keepdims=True)
  return z_NxC - np.log(np.exp(z_NxC).sum(axis=-1, keepdims=True))


def logsumexp(x, axis):
  m = x.max(axis=axis, keepdims=True)
  return np.squeeze(m, axis) + np.log(np.exp(x - m).sum(axis=axis))


def log_sigmoid(x):
  return -np.logaddexp(0.0, -x)


# Classification -------------------------------------------------------------


def classification(logits_NxC, label_N) -> dict:
  """Loss (mean cross-entropy), accuracy, macro-F1; AUROC when C == 2.

  The numbers mmfusion reported before tasks existed: macro-F1 averages
  the per-class F1 over the classes that occur in the prediction or the label;
  AUROC scores logit[:, 1] - logit[:, 0] with label 1 positive (nan when
  either class is absent).
  """
  logits_NxC = np.asarray(logits_NxC, np.float64)
  label_N = np.asarray(label_N)
  pred_N = logits_NxC.argmax(axis=-1)
  nll_N = -np.take_along_axis(log_softmax(logits_NxC), label_N[:, None], -1)
  out = {
      'loss': float(nll_N.mean()),
      'accuracy': float(np.mean(pred_N == label_N)),
      'macro_f1': f1(label_N, pred_N, np.union1d(pred_N, label_N), 'macro'),
      'examples': int(label_N.shape[0]),
  }
  if logits_NxC.shape[-1] == 2:
    out['auroc'] = auroc(logits_NxC[:, 1] - logits_NxC[:, 0], label_N == 1)
  return out


def f1(true, pred, labels, average) -> float:
  """sklearn's F1 over `labels` (those predicted or true); 0.0 if none."""
  from sklearn import metrics  # pylint: disable=g-import-not-at-top
  if not len(labels):
    return 0.0
  return float(metrics.f1_score(true, pred, labels=labels, average=average))


def auroc(score_N, positive_N) -> float:
  """ROC AUC (ties count one half); nan unless both classes occur."""
  from sklearn import metrics  # pylint: disable=g-import-not-at-top
  positive_N = np.asarray(positive_N, bool)
  if positive_N.all() or not positive_N.any():
    return float('nan')
  return float(metrics.roc_auc_score(positive_N, score_N))


# Multilabel -----------------------------------------------------------------


def sigmoid_bce(logits_NxC, labels_NxC):
  """Elementwise sigmoid cross-entropy, stable for any logit."""
  x, y = logits_NxC, labels_NxC
  return np.maximum(x, 0) - x * y + np.log1p(np.exp(-np.abs(x)))


def per_class_ap(logits_NxC, labels_NxC) -> np.ndarray:
  """[C] average precision of each class; nan for a class with no positives."""
  from sklearn import metrics  # pylint: disable=g-import-not-at-top
  logits_NxC = np.asarray(logits_NxC, np.float64)
  labels_NxC = np.asarray(labels_NxC) > 0
  ap_C = np.full(labels_NxC.shape[1], np.nan)
  for c in np.flatnonzero(labels_NxC.any(axis=0)):
    ap_C[c] = metrics.average_precision_score(labels_NxC[:, c],
                                              logits_NxC[:, c])
  return ap_C


def multilabel(logits_NxC, labels_NxC) -> dict:
  """Mean BCE, mAP (macro and micro), micro/macro-F1 at probability 0.5.

  `map` follows scenic's `compute_mean_average_precision`
  (scenic/projects/vivit/evaluation_lib.py, which MBT's trainer calls for
  AudioSet): sklearn's AP of each class on the logits, then `np.nanmean`, so
  a class with no positives (NaN AP in the sklearn it was written for) is left
  out of the mean. Recent sklearn returns 0.0 there instead, which would count
  it, so `per_class_ap` sets the NaN itself.
  `map_micro` pools all N*C scores. A label is predicted when its logit > 0;
  macro-F1, as in `classification`, averages over the labels that are
  predicted or true somewhere.
  """
  from sklearn import metrics  # pylint: disable=g-import-not-at-top
  logits_NxC = np.asarray(logits_NxC, np.float64)
  labels_NxC = np.asarray(labels_NxC)
  true_NxC, pred_NxC = labels_NxC > 0, logits_NxC > 0
  ap_C = per_class_ap(logits_NxC, true_NxC)
  seen_C = np.flatnonzero((true_NxC | pred_NxC).any(axis=0))
  return {
      'loss': float(sigmoid_bce(logits_NxC, labels_NxC).mean()),
      'map': float(np.nanmean(ap_C)) if np.isfinite(ap_C).any() else np.nan,
      'map_micro': float(metrics.average_precision_score(
          true_NxC.ravel(), logits_NxC.ravel())) if true_NxC.any() else np.nan,
      'micro_f1': f1(true_NxC, pred_NxC, seen_C, 'micro'),
      'macro_f1': f1(true_NxC, pred_NxC, seen_C, 'macro'),
      'examples': int(labels_NxC.shape[0]),
  }


# Regression -----------------------------------------------------------------


def pearson_R(x_NxR, y_NxR):
  """[R] Pearson correlation of each column pair; nan for a constant column."""
  dx_NxR = x_NxR - x_NxR.mean(axis=0)
  dy_NxR = y_NxR - y_NxR.mean(axis=0)
  with np.errstate(invalid='ignore', divide='ignore'):
    return (dx_NxR * dy_NxR).sum(0) / np.sqrt(
        (dx_NxR**2).sum(0) * (dy_NxR**2).sum(0))


def regression(pred_NxR, target_NxR, names=None) -> dict:
  """MAE, RMSE, Pearson and Spearman, each the mean over the R targets.

  With `names` (one per target) also `mae/<name>` etc. for each target.
  Spearman is Pearson of the ranks (ties share their mean rank).
  """
  import scipy.stats  # pylint: disable=g-import-not-at-top
  pred_NxR = np.asarray(pred_NxR, np.float64)
  target_NxR = np.asarray(target_NxR, np.float64)
  if pred_NxR.ndim == 1:
    pred_NxR, target_NxR = pred_NxR[:, None], target_NxR[:, None]
  err_NxR = pred_NxR - target_NxR
  per_target = {
      'mae': np.abs(err_NxR).mean(axis=0),
      'rmse': np.sqrt((err_NxR**2).mean(axis=0)),
      'pearson': pearson_R(pred_NxR, target_NxR),
      'spearman': pearson_R(scipy.stats.rankdata(pred_NxR, axis=0),
                            scipy.stats.rankdata(target_NxR, axis=0)),
  }
  out = {k: float(v_R.mean()) for k, v_R in per_target.items()}
  if names is not None:
    if len(names) != pred_NxR.shape[1]:
      raise ValueError(f'regression: {len(names)} names for '
                       f'{pred_NxR.shape[1]} targets; give one per target.')
    for k, v_R in per_target.items():
      out.update({f'{k}/{name}': float(v) for name, v in zip(names, v_R)})
  out['examples'] = int(pred_NxR.shape[0])
  return out


def sentiment(pred_N, target_N) -> dict:
  """CMU-MOSI/MOSEI sentiment scores as MulT reports them.

  Follows `eval_mosei_senti` in yaohungt/Multimodal-Transformer
  src/eval_metrics.py (Tsai et al. 2019), called there with
  exclude_zero=True: `acc2` is the accuracy of pred > 0 against target > 0
  over the examples whose target is not 0; `f1_2` is sklearn's weighted F1
  of the same, called as MulT does, f1_score(pred > 0, target > 0), so the
  classes are weighted by their predicted counts. `acc7` (`acc5`) compares
  np.round (half to even) of both clipped to [-3, 3] ([-2, 2]) over all
  examples; `mae` and `corr` (Pearson) are over all examples too.
  """
  from sklearn import metrics  # pylint: disable=g-import-not-at-top
  pred_N = np.asarray(pred_N, np.float64).ravel()
  target_N = np.asarray(target_N, np.float64).ravel()
  nonzero_N = target_N != 0
  pos_pred, pos_true = pred_N[nonzero_N] > 0, target_N[nonzero_N] > 0
  classes = lambda b: np.mean(np.round(np.clip(pred_N, -b, b)) ==
                              np.round(np.clip(target_N, -b, b)))
  return {
      'acc2': float(np.mean(pos_pred == pos_true)) if pos_true.size else np.nan,
      'f1_2': float(metrics.f1_score(pos_pred, pos_true, average='weighted',
                                     zero_division=0.0))
              if pos_true.size else np.nan,
      'acc7': float(classes(3.0)),
      'acc5': float(classes(2.0)),
      'mae': float(np.abs(pred_N - target_N).mean()),
      'corr': float(pearson_R(pred_N[:, None], target_N[:, None])[0]),
      'examples': int(pred_N.shape[0]),
  }


# Retrieval ------------------------------------------------------------------


def positive_ranks(sim_NxN, rows_per_chunk=None) -> np.ndarray:
  """[N] rank of column i in row i: 1 + columns with a strictly higher score."""
  n = sim_NxN.shape[0]
  chunk = rows_per_chunk or max(1, (1 << 24) // max(n, 1))  # ~16 MB of bools
  ranks_N = np.empty(n, np.int64)
  for start in range(0, n, chunk):
    rows_KxN = np.asarray(sim_NxN[start:start + chunk])
    k = rows_KxN.shape[0]
    pos_K = rows_KxN[np.arange(k), np.arange(start, start + k)]
    ranks_N[start:start + k] = 1 + (rows_KxN > pos_K[:, None]).sum(axis=1)
  return ranks_N


def retrieval(sim_NxN, rows_per_chunk=None) -> dict:
  """Recall@{1,5,10} and median rank, rows->columns and columns->rows.

  Row i's positive is column i. The positive's rank is 1 + the number of
  candidates with a strictly higher similarity, so ties are resolved in the
  positive's favour. Keys are prefixed `a_to_b/` (rows query columns) and
  `b_to_a/` (columns query rows). Rows are processed in chunks, so a 10k x 10k
  matrix needs no N x N temporary.
  """
  sim_NxN = np.asarray(sim_NxN)
  if sim_NxN.ndim != 2 or sim_NxN.shape[0] != sim_NxN.shape[1]:
    raise ValueError(f'retrieval: similarities of shape {sim_NxN.shape}; '
                     'expected a square [N, N] matrix with positives on the '
                     'diagonal.')
  out = {}
  for prefix, sim in (('a_to_b', sim_NxN), ('b_to_a', sim_NxN.T)):
    ranks_N = positive_ranks(sim, rows_per_chunk)
    for k in RECALL_AT:
      out[f'{prefix}/recall@{k}'] = float(np.mean(ranks_N <= k))
    out[f'{prefix}/median_rank'] = float(np.median(ranks_N))
  out['examples'] = int(sim_NxN.shape[0])
  return out


# Contrastive losses (numpy references for the JAX losses) -------------------


def infonce_loss(a_NxD, b_NxD, log_scale) -> float:
  """CLIP's symmetric InfoNCE: the mean of the a->b and b->a cross-entropies.

  logits = exp(log_scale) * a @ b.T with the diagonal as targets (Radford et
  al. 2021); a and b are used as given, so normalise them first as CLIP does.
  """
  a_NxD, b_NxD = np.asarray(a_NxD, np.float64), np.asarray(b_NxD, np.float64)
  logits_NxN = np.exp(log_scale) * a_NxD @ b_NxD.T
  diag_N = np.diagonal(logits_NxN)
  a_to_b = np.mean(logsumexp(logits_NxN, axis=1) - diag_N)
  b_to_a = np.mean(logsumexp(logits_NxN, axis=0) - diag_N)
  return float(0.5 * (a_to_b + b_to_a))


def siglip_loss(a_NxD, b_NxD, log_scale, bias) -> float:
  """SigLIP's pairwise sigmoid loss (Zhai et al. 2023).

  -mean_i sum_j log sigmoid(z_ij * (exp(log_scale) * a_i.b_j + bias)), z = +1
  on the diagonal and -1 off it: summed over the columns, averaged over the
  rows, as big_vision/trainers/proj/image_text/siglip.py does (its
  temperature is exp of a parameter, models/proj/image_text/two_towers.py).
  """
  a_NxD, b_NxD = np.asarray(a_NxD, np.float64), np.asarray(b_NxD, np.float64)
  logits_NxN = np.exp(log_scale) * a_NxD @ b_NxD.T + bias
  z_NxN = 2.0 * np.eye(len(logits_NxN)) - 1.0
  return float(-log_sigmoid(z_NxN * logits_NxN).sum(axis=1).mean())
