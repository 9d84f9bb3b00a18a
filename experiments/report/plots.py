"""The report's figures, drawn with matplotlib's Agg backend into PNG files.

Every function takes the per-cell rows of `aggregate.summarize` (a value is a
(mean, 95% CI half-width, n) triple) and writes one PNG.
"""

import math

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)
import numpy as np  # noqa: E402

from experiments.report import stats  # noqa: E402

STAGE_COLORS = {'early': 'tab:green', 'intermediate': 'tab:blue',
                'late': 'tab:orange'}
DPI = 120
# Metrics in [0, 1]: their axes are drawn from 0 to 1.
UNIT_METRICS = ('accuracy', 'macro_f1', 'micro_f1', 'map', 'map_micro',
                'auroc', 'recall@1', 'recall@5', 'recall@10')


def _err(ci):
  return 0.0 if ci is None or not math.isfinite(ci) else ci


def _save(fig, path):
  fig.tight_layout()
  fig.savefig(path, dpi=DPI)
  plt.close(fig)


def _stage_legend(ax, rows):
  stages = [s for s in STAGE_COLORS if any(r['stage'] == s for r in rows)]
  handles = [plt.Rectangle((0, 0), 1, 1, color=STAGE_COLORS[s]) for s in stages]
  ax.legend(handles, stages, title='fusion stage', fontsize=8, loc='best')


def accuracy_bars(rows, path, metric='accuracy', chance=None):
  """One bar per cell: mean test `metric` with its 95% CI, `chance` dashed."""
  fig, ax = plt.subplots(figsize=(max(5, 0.5 * len(rows) + 2), 4))
  x = np.arange(len(rows))
  means = [r['test'][metric][0] for r in rows]
  ax.bar(x, means, yerr=[_err(r['test'][metric][1]) for r in rows],
         color=[STAGE_COLORS[r['stage']] for r in rows], capsize=3)
  if chance is not None:
    ax.axhline(chance, color='gray', ls='--', lw=1, label='chance')
  ax.set_xticks(x, [r['label'] for r in rows], rotation=60, ha='right',
                fontsize=8)
  ax.set_ylabel(f'test {metric} (mean, 95% CI)')
  ax.set_ylim(0, 1.0 if metric in UNIT_METRICS else None)
  _stage_legend(ax, rows)
  _save(fig, path)


def pareto(rows, path, metric='accuracy', higher: bool = True):
  """Test `metric` against forward GFLOPs, the Pareto front joined, ringed
  (`higher`: larger values are better)."""
  gflops = [(r['cost']['forward']['flops'] or math.nan) / 1e9 for r in rows]
  means = [r['test'][metric][0] for r in rows]
  front = stats.pareto_front(gflops, means if higher else [-m for m in means])
  fig, ax = plt.subplots(figsize=(7, 4.5))
  for r, g, m in zip(rows, gflops, means):
    ax.errorbar(g, m, yerr=_err(r['test'][metric][1]), fmt='o', ms=5,
                color=STAGE_COLORS[r['stage']], capsize=2)
    ax.annotate(r['label'], (g, m), fontsize=7, xytext=(3, 3),
                textcoords='offset points')
  on = sorted((g, m) for g, m, f in zip(gflops, means, front) if f)
  if on:
    ax.step([p[0] for p in on], [p[1] for p in on], where='post', color='k',
            lw=1, alpha=0.6)
    ax.scatter([p[0] for p in on], [p[1] for p in on], s=120,
               facecolors='none', edgecolors='k', label='Pareto front')
  finite = [g for g in gflops if math.isfinite(g)]
  if finite and min(finite) > 0 and max(finite) > 10 * min(finite):
    ax.set_xscale('log')
  else:
    ax.ticklabel_format(axis='x', style='sci', scilimits=(-3, 3))
  ax.set_xlabel(f'forward GFLOPs per batch of {rows[0]["cost"]["batch_size"]}')
  ax.set_ylabel(f'test {metric}')
  ax.legend(fontsize=8, loc='best')
  _save(fig, path)
  return front


def missing_modality_heatmap(rows, path, columns):
  """Cells x modality subsets, coloured and annotated by the mean test
  metric (`columns[0]`, then its subsets)."""
  metric = columns[0]
  matrix = np.array([[r['test'].get(c, (math.nan,))[0] for c in columns]
                     for r in rows])
  fig, ax = plt.subplots(figsize=(1.4 * len(columns) + 3,
                                  0.35 * len(rows) + 1.5))
  unit = metric in UNIT_METRICS
  im = ax.imshow(matrix, cmap='viridis', vmin=0 if unit else None,
                 vmax=1 if unit else None, aspect='auto')
  middle = 0.6 if unit else np.nanmean(matrix)
  for i in range(matrix.shape[0]):
    for j in range(matrix.shape[1]):
      if math.isfinite(matrix[i, j]):
        ax.text(j, i, f'{matrix[i, j]:.2f}', ha='center', va='center',
                fontsize=7, color='w' if matrix[i, j] < middle else 'k')
  names = ['all' if c == metric else c.split('/', 1)[1] for c in columns]
  ax.set_xticks(range(len(columns)), names, fontsize=8)
  ax.set_yticks(range(len(rows)), [r['label'] for r in rows], fontsize=8)
  ax.set_xlabel('modalities present at test time')
  fig.colorbar(im, ax=ax, label=f'test {metric}')
  _save(fig, path)


def robustness_curves(rows, path, kinds, targets, metric='accuracy',
                      chance=None):
  """`metric` against severity: one panel per (kind, target), a line a
  cell; `chance` dashed."""
  panels = [(k, t) for k in kinds for t in targets
            if any(t in r['curves'].get(k, {}) for r in rows)]
  if not panels:
    return False
  cols = min(3, len(panels))
  nrows = math.ceil(len(panels) / cols)
  fig, axes = plt.subplots(nrows, cols, figsize=(4 * cols + 2, 3.2 * nrows),
                           squeeze=False, sharey=True)
  colors = plt.get_cmap('tab20')(np.linspace(0, 1, max(len(rows), 2)))
  for ax, (kind, target) in zip(axes.flat, panels):
    for color, r in zip(colors, rows):
      curve = r['curves'].get(kind, {}).get(target)
      if curve is None:
        continue
      s = np.arange(len(curve))
      mean = np.array([c[0] for c in curve])
      ci = np.array([_err(c[1]) for c in curve])
      ax.plot(s, mean, marker='o', ms=3, color=color, label=r['label'])
      ax.fill_between(s, mean - ci, mean + ci, color=color, alpha=0.15)
    if chance is not None:
      ax.axhline(chance, color='gray', ls='--', lw=1)
    ax.set_title(f'{kind} on {target}', fontsize=9)
    ax.set_xlabel('severity')
    if metric in UNIT_METRICS:
      ax.set_ylim(0, 1)
  for ax in axes.flat[len(panels):]:
    ax.axis('off')
  axes[0, 0].set_ylabel(f'test {metric}')
  handles, labels = axes.flat[0].get_legend_handles_labels()
  fig.legend(handles, labels, loc='center right', fontsize=7)
  fig.tight_layout(rect=(0, 0, 0.83, 1))
  fig.savefig(path, dpi=DPI)
  plt.close(fig)
  return True


def contribution_bars(rows, path, modalities, metric='accuracy'):
  """Shapley value and leave-one-out drop of each modality, per cell."""
  fig, axes = plt.subplots(1, 2, figsize=(11, 0.3 * len(rows) * len(
      modalities) + 1.8), sharey=True)
  y = np.arange(len(rows))
  height = 0.8 / len(modalities)
  for ax, group, title in zip(axes, ('shapley', 'loo'), (
      f'Shapley value ({metric} above chance)',
      f'leave-one-out drop ({metric} lost)')):
    for i, m in enumerate(modalities):
      vals = [r[group].get(m, (math.nan, math.nan))for r in rows]
      ax.barh(y + i * height, [v[0] for v in vals], height,
              xerr=[_err(v[1]) for v in vals], capsize=2, label=m)
    ax.axvline(0, color='k', lw=0.8)
    ax.set_title(title, fontsize=9)
  axes[0].set_yticks(y + height * (len(modalities) - 1) / 2,
                     [r['label'] for r in rows], fontsize=8)
  axes[0].invert_yaxis()
  axes[1].legend(title='modality', fontsize=8)
  _save(fig, path)
