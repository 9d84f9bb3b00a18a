"""mmfusion.tasks.metrics against independent formulas and hand-made cases."""

import math
import warnings

import numpy as np
import pytest
import scipy.stats
from sklearn import metrics as skm

from mmfusion.tasks import metrics

# Classification: a copy of the formulas committed results were computed with.


def ref_macro_f1(pred_N, label_N, num_classes):
  f1s = []
  for c in range(num_classes):
    tp = np.sum((pred_N == c) & (label_N == c))
    fp = np.sum((pred_N == c) & (label_N != c))
    fn = np.sum((pred_N != c) & (label_N == c))
    if tp + fp + fn:
      f1s.append(2 * tp / (2 * tp + fp + fn))
  return float(np.mean(f1s)) if f1s else 0.0


def ref_auroc(score_N, positive_N):
  positive_N = np.asarray(positive_N, bool)
  n_pos, n_neg = positive_N.sum(), (~positive_N).sum()
  if n_pos == 0 or n_neg == 0:
    return float('nan')
  ranks_N = scipy.stats.rankdata(score_N)
  u = ranks_N[positive_N].sum() - n_pos * (n_pos + 1) / 2
  return float(u / (n_pos * n_neg))


def ref_classification(logits_NxC, label_N):
  logits_NxC = np.asarray(logits_NxC, np.float64)
  z = logits_NxC - logits_NxC.max(axis=-1, keepdims=True)
  logp = z - np.log(np.exp(z).sum(axis=-1, keepdims=True))
  pred_N = logits_NxC.argmax(axis=-1)
  out = {
      'loss': float(-np.take_along_axis(logp, label_N[:, None], -1).mean()),
      'accuracy': float(np.mean(pred_N == label_N)),
      'macro_f1': ref_macro_f1(pred_N, label_N, logits_NxC.shape[-1]),
      'examples': int(label_N.shape[0]),
  }
  if logits_NxC.shape[-1] == 2:
    out['auroc'] = ref_auroc(logits_NxC[:, 1] - logits_NxC[:, 0], label_N == 1)
  return out


def classification_cases():
  rng = np.random.default_rng(0)
  yield 'random5', rng.normal(size=(300, 5)) * 3, rng.integers(0, 5, 300)
  yield 'random2', rng.normal(size=(257, 2)), rng.integers(0, 2, 257)
  # Integer logits: tied argmaxes and tied AUROC scores.
  ints = lambda lo, hi, shape: rng.integers(lo, hi, shape).astype(float)
  yield 'ties', ints(-2, 3, (200, 2)), rng.integers(0, 2, 200)
  yield 'ties4', ints(0, 2, (100, 4)), rng.integers(0, 4, 100)
  # Class 3 never predicted; class 4 neither predicted nor a label.
  logits = rng.normal(size=(120, 5))
  logits[:, 3:] -= 100
  yield 'never_predicted', logits, rng.integers(0, 4, 120)
  yield 'one_class_absent', rng.normal(size=(40, 2)), np.zeros(40, int)
  yield 'only_positives', rng.normal(size=(40, 2)), np.ones(40, int)


@pytest.mark.parametrize('name,logits_NxC,label_N',
                         list(classification_cases()))
def test_classification_matches_committed_formulas(name, logits_NxC, label_N):
  got, want = metrics.classification(logits_NxC, label_N), ref_classification(
      logits_NxC, label_N)
  assert got.keys() == want.keys(), name
  for k in want:
    assert isinstance(got[k], int if k == 'examples' else float), k
    np.testing.assert_allclose(got[k], want[k], rtol=0, atol=1e-12, err_msg=k)
  if name == 'one_class_absent':
    assert math.isnan(got['auroc'])


def test_classification_hand_case():
  # preds [0, 0, 2, 1]; F1: class 0 2/3, class 1 0, class 2 2/3.
  logits_NxC = np.array([[2., 0, 0], [1, 0, 0], [0, 0, 3], [0, 1, 0]])
  got = metrics.classification(logits_NxC, np.array([0, 1, 2, 2]))
  assert got['accuracy'] == 0.5
  assert got['macro_f1'] == pytest.approx(4 / 9, abs=1e-15)
  assert 'auroc' not in got


# Multilabel -------------------------------------------------------------------

# Distinct scores (AP is rank-based). Class 0: positives at ranks 1 and 3 ->
# AP (1 + 2/3) / 2; class 1: its positive ranked last of 4 -> AP 1/4; class 2
# has no positives. Pooled: positives at ranks 1, 9, 12 of 12.
TINY_LOGITS = np.array([[.9, .85, .7], [.8, .05, .6], [.3, .5, .4],
                        [.1, .35, .2]])
TINY_LABELS = np.array([[1, 0, 0], [0, 1, 0], [1, 0, 0], [0, 0, 0]])


def test_multilabel_map_hand_computed():
  got = metrics.multilabel(TINY_LOGITS, TINY_LABELS)
  ap_C = metrics.per_class_ap(TINY_LOGITS, TINY_LABELS)
  np.testing.assert_allclose(ap_C[:2], [5 / 6, 1 / 4], atol=1e-15)
  assert np.isnan(ap_C[2])
  assert got['map'] == pytest.approx((5 / 6 + 1 / 4) / 2, abs=1e-15)
  assert got['map_micro'] == pytest.approx((1 + 2 / 9 + 3 / 12) / 3, abs=1e-15)


def test_multilabel_class_without_positives_left_out_of_map():
  # sklearn scores such a class 0.0; scenic's nanmean convention skips it.
  with warnings.catch_warnings():
    warnings.simplefilter('ignore')
    sk_ap_C = skm.average_precision_score(TINY_LABELS, TINY_LOGITS,
                                          average=None)
  assert sk_ap_C[2] == 0.0
  got = metrics.multilabel(TINY_LOGITS, TINY_LABELS)['map']
  assert got == pytest.approx(sk_ap_C[:2].mean(), abs=1e-15)
  assert got != pytest.approx(sk_ap_C.mean())
  none = metrics.multilabel(TINY_LOGITS, np.zeros_like(TINY_LABELS))
  assert math.isnan(none['map']) and math.isnan(none['map_micro'])


def test_multilabel_matches_sklearn_directly():
  rng = np.random.default_rng(1)
  logits_NxC = rng.normal(size=(200, 7))
  labels_NxC = (rng.random((200, 7)) < 0.3).astype(np.int32)
  labels_NxC[:, 4] = 0  # a class with no positives
  got = metrics.multilabel(logits_NxC, labels_NxC)
  with_pos = [c for c in range(7) if c != 4]
  want_map = np.mean([skm.average_precision_score(labels_NxC[:, c],
                                                  logits_NxC[:, c])
                      for c in with_pos])
  assert got['map'] == pytest.approx(want_map, abs=1e-12)
  assert got['map_micro'] == pytest.approx(skm.average_precision_score(
      labels_NxC, logits_NxC, average='micro'), abs=1e-12)
  prob_NxC = 1 / (1 + np.exp(-logits_NxC))
  assert got['micro_f1'] == pytest.approx(skm.f1_score(
      labels_NxC, prob_NxC > 0.5, average='micro'), abs=1e-12)
  # Class 4 is predicted somewhere, so it counts in macro-F1 (as an F1 of 0).
  assert got['macro_f1'] == pytest.approx(skm.f1_score(
      labels_NxC, prob_NxC > 0.5, average='macro', zero_division=0), abs=1e-12)
  want_loss = -np.mean(labels_NxC * np.log(prob_NxC) +
                       (1 - labels_NxC) * np.log(1 - prob_NxC))
  assert got['loss'] == pytest.approx(want_loss, rel=1e-12)
  assert got['examples'] == 200


def test_multilabel_f1_hand_case_and_unseen_label():
  # Label 0: tp 1, fn 1 -> F1 2/3. Label 1: tp 1, fp 1 -> 2/3. Label 2 is
  # never true nor predicted: left out of macro-F1 (sklearn would count 0).
  logits_NxC = np.array([[3., 2, -1], [-1, 1, -2], [-2, -3, -1]])
  labels_NxC = np.array([[1, 1, 0], [1, 0, 0], [0, 0, 0]])
  got = metrics.multilabel(logits_NxC, labels_NxC)
  assert got['macro_f1'] == pytest.approx(2 / 3, abs=1e-15)
  assert got['micro_f1'] == pytest.approx(2 * 2 / (2 * 2 + 1 + 1), abs=1e-15)


def test_multilabel_loss_stable_for_large_logits():
  logits_NxC = np.array([[1000., -1000.], [-800., 900.]])
  right = metrics.multilabel(logits_NxC, np.array([[1, 0], [0, 1]]))['loss']
  wrong = metrics.multilabel(logits_NxC, np.array([[0, 1], [1, 0]]))['loss']
  assert right == 0.0
  assert wrong == pytest.approx((1000 + 1000 + 800 + 900) / 4)


# Regression and sentiment -----------------------------------------------------


def test_regression_hand_case_and_names():
  pred_NxR = np.array([[1., 0.], [2., 2.], [4., 1.]])
  target_NxR = np.array([[1., 1.], [3., 2.], [3., 3.]])
  got = metrics.regression(pred_NxR, target_NxR, names=['x', 'y'])
  # Errors: x [0, -1, 1], y [-1, 0, -2].
  assert got['mae/x'] == pytest.approx(2 / 3) and got['mae/y'] == 1.0
  assert got['rmse/x'] == pytest.approx(math.sqrt(2 / 3))
  assert got['rmse/y'] == pytest.approx(math.sqrt(5 / 3))
  assert got['mae'] == pytest.approx((2 / 3 + 1) / 2)
  # x: pred [1, 2, 4] vs [1, 3, 3]; centred [-4/3, -1/3, 5/3], [-4/3, 2/3, 2/3].
  want_rx = (16 / 9 - 2 / 9 + 10 / 9) / math.sqrt((42 / 9) * (24 / 9))
  assert got['pearson/x'] == pytest.approx(want_rx, abs=1e-12)
  # y: ranks [1, 3, 2] vs [1.5, 1.5, 3].
  want_sy = scipy.stats.spearmanr(pred_NxR[:, 1], target_NxR[:, 1]).statistic
  assert got['spearman/y'] == pytest.approx(want_sy, abs=1e-12)
  assert got['examples'] == 3
  assert 'mae/x' not in metrics.regression(pred_NxR, target_NxR)
  with pytest.raises(ValueError, match='one per target'):
    metrics.regression(pred_NxR, target_NxR, names=['x'])


def test_regression_matches_scipy():
  rng = np.random.default_rng(2)
  target_NxR = rng.normal(size=(100, 3))
  pred_NxR = target_NxR + rng.normal(size=(100, 3))
  pred_NxR[:10, 0] = 0.0  # ties for Spearman
  got = metrics.regression(pred_NxR, target_NxR)
  want_p = np.mean([scipy.stats.pearsonr(pred_NxR[:, r], target_NxR[:, r])[0]
                    for r in range(3)])
  want_s = np.mean([scipy.stats.spearmanr(pred_NxR[:, r], target_NxR[:, r])[0]
                    for r in range(3)])
  assert got['pearson'] == pytest.approx(want_p, abs=1e-12)
  assert got['spearman'] == pytest.approx(want_s, abs=1e-12)
  one = metrics.regression(pred_NxR[:, 0], target_NxR[:, 0])
  assert one['rmse'] == pytest.approx(
      math.sqrt(np.mean((pred_NxR[:, 0] - target_NxR[:, 0])**2)))


def test_sentiment_acc2_excludes_zero_targets():
  # The two zero targets have positive predictions: counted, Acc-2 is 0.5.
  got = metrics.sentiment([1., 2., 1., -1.], [0., 0., 1.5, -2.])
  assert got['acc2'] == 1.0


def test_sentiment_acc2_zero_prediction_is_negative():
  # MulT binarises with pred > 0: a prediction of exactly 0 is negative.
  assert metrics.sentiment([0., -1.], [1., -1.])['acc2'] == 0.5


def test_sentiment_f1_weighted_as_mult():
  # Non-zero targets: truth + + + -, pred + + - -; per-class F1: + 4/5, - 2/3.
  # MulT calls f1_score(pred, truth): weights by predicted counts 2, 2
  # (weighting by true counts 3, 1 would give 23/30).
  got = metrics.sentiment([1., 2., -1., -2., 3.], [1., 2., 3., -1., 0.])
  assert got['f1_2'] == pytest.approx(0.5 * 4 / 5 + 0.5 * 2 / 3, abs=1e-15)
  assert got['acc2'] == 0.75


def test_sentiment_acc7_clips_and_rounds_like_numpy():
  # 5 -> 3 and -4.2 -> -3 after clipping; 0.5 rounds half to even, to 0.
  pred_N, target_N = [5., -4.2, 2.6, 0.5], [3.2, -3., 3., 0.4]
  got = metrics.sentiment(pred_N, target_N)
  assert got['acc7'] == 1.0
  assert got['acc5'] == 1.0  # all clip to +-2 and agree
  assert metrics.sentiment([1.4, -2.6], [0.6, -2.])['acc7'] == 0.5
  assert got['mae'] == pytest.approx(np.mean([1.8, 1.2, 0.4, 0.1]))
  assert got['corr'] == pytest.approx(np.corrcoef(pred_N, target_N)[0, 1])


# Retrieval --------------------------------------------------------------------


def sim_with_ranks(ranks_N, seed=0):
  """[N, N] similarities whose row i puts its diagonal at rank ranks_N[i]."""
  n = len(ranks_N)
  sim_NxN = np.random.default_rng(seed).permutation(n * n).reshape(n, n) * 1.0
  for i, r in enumerate(ranks_N):
    others = np.sort(np.delete(sim_NxN[i], i))[::-1]  # distinct integers
    padded = np.concatenate([[others[0] + 1], others, [others[-1] - 1]])
    sim_NxN[i, i] = (padded[r - 1] + padded[r]) / 2  # below r - 1 of them
  return sim_NxN


def test_retrieval_known_ranks():
  ranks_N = [1, 1, 2, 3, 5, 6, 7, 10, 11, 12, 1, 4]
  sim_NxN = sim_with_ranks(ranks_N)
  np.testing.assert_array_equal(metrics.positive_ranks(sim_NxN), ranks_N)
  got = metrics.retrieval(sim_NxN)
  assert got['a_to_b/recall@1'] == 3 / 12
  assert got['a_to_b/recall@5'] == 7 / 12
  assert got['a_to_b/recall@10'] == 10 / 12
  assert got['a_to_b/median_rank'] == 4.5
  assert got['examples'] == 12
  for chunk in (1, 5, 7):
    assert metrics.retrieval(sim_NxN, rows_per_chunk=chunk) == got


def test_retrieval_ties_favour_the_positive_and_directions():
  sim_NxN = np.array([[.9, .1, .2, .3],
                      [.8, .5, .5, .1],
                      [.7, .6, .4, .5],
                      [.0, .2, .1, .3]])
  got = metrics.retrieval(sim_NxN)
  # Rows: ranks 1, 2 (the .5 tie does not count), 4, 1.
  assert got['a_to_b/recall@1'] == 0.5 and got['a_to_b/median_rank'] == 1.5
  # Columns: ranks 1, 2, 2, 2 (column 3's .3 tie does not count).
  assert got['b_to_a/recall@1'] == 0.25 and got['b_to_a/median_rank'] == 2.0
  assert got['b_to_a/recall@5'] == 1.0
  flipped = metrics.retrieval(sim_NxN.T)
  for k in ('recall@1', 'recall@5', 'recall@10', 'median_rank'):
    assert flipped[f'a_to_b/{k}'] == got[f'b_to_a/{k}']
    assert flipped[f'b_to_a/{k}'] == got[f'a_to_b/{k}']


def test_retrieval_perfect_diagonal():
  rng = np.random.default_rng(3)
  sim_NxN = np.eye(30) + 0.9 * rng.random((30, 30)) * (1 - np.eye(30))
  got = metrics.retrieval(sim_NxN)
  for d in ('a_to_b', 'b_to_a'):
    assert got[f'{d}/recall@1'] == 1.0 and got[f'{d}/median_rank'] == 1.0
  with pytest.raises(ValueError, match='square'):
    metrics.retrieval(np.zeros((3, 4)))


# Contrastive losses -----------------------------------------------------------


def test_infonce_orthogonal_pair():
  eye = np.eye(2)
  # logits = I: each row and column: -log(e / (e + 1)).
  assert metrics.infonce_loss(eye, eye, 0.0) == pytest.approx(
      math.log1p(math.exp(-1)), abs=1e-15)
  # scale 2 (log_scale = log 2): logits = 2 I.
  assert metrics.infonce_loss(eye, eye, math.log(2)) == pytest.approx(
      math.log1p(math.exp(-2)), abs=1e-15)


def test_infonce_asymmetric_matches_loops():
  rng = np.random.default_rng(4)
  a_NxD, b_NxD = rng.normal(size=(5, 3)), rng.normal(size=(5, 3))
  t = math.exp(0.7)
  s = [[t * float(a_NxD[i] @ b_NxD[j]) for j in range(5)] for i in range(5)]
  row = [math.log(sum(math.exp(s[i][j]) for j in range(5))) - s[i][i]
         for i in range(5)]
  col = [math.log(sum(math.exp(s[j][i]) for j in range(5))) - s[i][i]
         for i in range(5)]
  want = 0.5 * (sum(row) / 5 + sum(col) / 5)
  got = metrics.infonce_loss(a_NxD, b_NxD, 0.7)
  assert got == pytest.approx(want, abs=1e-12)


def test_siglip_sums_columns_and_averages_rows():
  eye3 = np.eye(3)
  # t = 1, b = 0: each row: -log sigmoid(1) - 2 log sigmoid(0).
  want = math.log1p(math.exp(-1)) + 2 * math.log(2)
  got = metrics.siglip_loss(eye3, eye3, 0.0, 0.0)
  assert got == pytest.approx(want, abs=1e-15)
  # t = 2, b = -1 on N = 2: diagonal logit 1, off-diagonal -1, both "right".
  want2 = 2 * math.log1p(math.exp(-1))
  assert metrics.siglip_loss(np.eye(2), np.eye(2), math.log(2), -1.0) == (
      pytest.approx(want2, abs=1e-15))


def test_siglip_stable_for_large_logits():
  eye = np.eye(2)
  # Diagonal logits +-1000, off-diagonal 0 (each -log sigmoid(0) = log 2).
  assert metrics.siglip_loss(eye, eye, math.log(1000.), 0.0) == pytest.approx(
      math.log(2), abs=1e-15)
  assert metrics.siglip_loss(eye, -eye, math.log(1000.), 0.0) == pytest.approx(
      1000.0 + math.log(2), abs=1e-12)
