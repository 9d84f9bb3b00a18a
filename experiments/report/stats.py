"""The numbers of an ablation report: confidence intervals, Pareto fronts,
robustness areas and modality contributions. Pure numpy/scipy, no JAX.

Shape legend: N seeds, S severities (0 = clean), P points.
"""

import itertools
import math

import numpy as np
import scipy.stats


def mean_ci(values, confidence: float = 0.95) -> tuple[float, float, int]:
  """(mean, half-width, n) of a Student-t confidence interval over `values`.

  The half-width is t_{(1+c)/2, n-1} * s / sqrt(n) with s the sample standard
  deviation; NaN for fewer than two finite values (one seed has no spread).
  """
  x_N = np.asarray([v for v in values if v is not None], np.float64)
  x_N = x_N[np.isfinite(x_N)]
  n = len(x_N)
  if n == 0:
    return math.nan, math.nan, 0
  mean = float(x_N.mean())
  if n == 1:
    return mean, math.nan, 1
  sem = x_N.std(ddof=1) / math.sqrt(n)
  return mean, float(scipy.stats.t.ppf((1 + confidence) / 2, n - 1) * sem), n


def pareto_front(cost_P, value_P) -> list[bool]:
  """Which points no other point beats: cost <= and value >=, one strictly.

  Lower cost and higher value are better (e.g. GFLOPs and accuracy); points
  with a NaN coordinate are never on the front.
  """
  c_P, v_P = np.asarray(cost_P, np.float64), np.asarray(value_P, np.float64)
  ok_P = np.isfinite(c_P) & np.isfinite(v_P)
  out = []
  for i in range(len(c_P)):
    beaten = ok_P & (c_P <= c_P[i]) & (v_P >= v_P[i]) & (
        (c_P < c_P[i]) | (v_P > v_P[i]))
    out.append(bool(ok_P[i] and not beaten.any()))
  return out


def _severity_axis(num: int):
  """Severities 0..num-1 rescaled to [0, 1], so an area is a mean accuracy."""
  return np.linspace(0.0, 1.0, num) if num > 1 else np.zeros(1)


def relative_robustness(acc_S) -> float:
  """Area under accuracy vs severity (trapezoids, severity scaled to [0, 1]).

  MultiBench's relative robustness (Liang et al. 2021): the accuracy a model
  keeps over increasing imperfection, 1.0 for a perfect, unaffected model.
  """
  acc_S = np.asarray(acc_S, np.float64)
  if len(acc_S) == 1:
    return float(acc_S[0])
  return float(np.trapezoid(acc_S, _severity_axis(len(acc_S))))


def effective_robustness(acc_S, reference_S) -> float:
  """Area of `acc_S` above the reference curve shifted to its clean accuracy.

  MultiBench's effective robustness (Liang et al. 2021): with LF the late
  fusion reference, f's curve is compared to LF(s) + (f(0) - LF(0)), the drop
  late fusion would show from f's clean accuracy. Positive: f degrades less
  than late fusion. MultiBench sums the differences over levels; we integrate
  them like `relative_robustness`, so both live on the accuracy scale.
  """
  f_S, lf_S = np.asarray(acc_S, np.float64), np.asarray(reference_S, np.float64)
  if f_S.shape != lf_S.shape:
    raise ValueError(f'curves of {f_S.shape} and {lf_S.shape} severities')
  return relative_robustness(f_S - (lf_S + f_S[0] - lf_S[0]))


def minmax(values) -> list[float]:
  """`values` rescaled to [0, 1] over the methods compared (MultiBench's
  normalisation of both robustness scores); all 0.5 when they are equal."""
  x = np.asarray(values, np.float64)
  if not np.isfinite(x).any():
    return [math.nan] * len(x)
  lo, hi = np.nanmin(x), np.nanmax(x)
  if not hi > lo:
    return [0.5 if np.isfinite(v) else math.nan for v in x]
  return [float(v) for v in (x - lo) / (hi - lo)]


def shapley_values(value, players) -> dict:
  """Exact Shapley values of a cooperative game over `players`.

  `value(frozenset)` gives the worth of a coalition (here the accuracy with
  only those modalities present; the empty one is chance). Player m gets
    phi_m = sum_{S without m} |S|! (n - |S| - 1)! / n! * (v(S + m) - v(S)),
  so the values add up to v(all) - v(empty) (efficiency).
  """
  players = sorted(players)
  n = len(players)
  cache = {}

  def v(coalition):
    if coalition not in cache:
      cache[coalition] = float(value(coalition))
    return cache[coalition]

  out = {}
  for m in players:
    others = [p for p in players if p != m]
    phi = 0.0
    for r in range(n):
      weight = math.factorial(r) * math.factorial(n - r - 1) / math.factorial(n)
      for s in itertools.combinations(others, r):
        phi += weight * (v(frozenset(s) | {m}) - v(frozenset(s)))
    out[m] = phi
  return out


def leave_one_out(value, players) -> dict:
  """v(all) - v(all without m): what the model loses when m goes missing."""
  everyone = frozenset(players)
  return {m: float(value(everyone)) - float(value(everyone - {m}))
          for m in sorted(players)}


def subset_value(test_metrics: dict, modalities, chance: float,
                 metric: str = 'accuracy'):
  """`value(frozenset)` over a run's per-subset test metrics.

  The full set reads `metric`, a proper subset `metric/a+b` (sorted names, as
  `mmfusion.evaluate` writes them), and the empty set is `chance`.
  """
  everyone = frozenset(modalities)

  def value(coalition):
    if not coalition:
      return chance
    if coalition == everyone:
      return test_metrics[metric]
    return test_metrics[f'{metric}/{"+".join(sorted(coalition))}']

  return value
