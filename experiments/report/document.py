"""The files an ablation leaves in its workdir: results.csv, results.md,
robustness.md, contributions.md, the PNG figures and report.md, which
assembles the main tables and figures and reads on its own.
"""

import csv
import math
import os

from experiments.report import aggregate, plots, stats

METRICS = ('accuracy', 'macro_f1', 'loss', 'auroc')  # classification's


def score(rows) -> aggregate.Score:
  """The metric the report ranks by: the task's primary one."""
  return aggregate.score(rows[0]['cost'])


def metrics_of(rows) -> list[str]:
  """The full-set test metrics of the table: the task's results columns."""
  from mmfusion import tasks  # pylint: disable=g-import-not-at-top
  task = score(rows).task
  names = METRICS if task == 'classification' else [
      m for m in tasks.TASKS[task].TABLE if m != 'examples'] + ['loss']
  return [m for m in dict.fromkeys(names)  # once each, in order
          if any(m in r['test'] for r in rows)]


def fmt(triple, digits: int = 3, signed: bool = False) -> str:
  """'0.972 ± 0.004' from (mean, CI half-width, n); '—' when missing."""
  mean, ci, _ = triple
  if mean is None or not math.isfinite(mean):
    return '—'
  sign = '+' if signed else ''
  text = f'{round(mean, digits) + 0.0:{sign}.{digits}f}'  # no '-0.000'
  return text if not math.isfinite(ci) else f'{text} ± {ci:.{digits}f}'


def table(header, rows) -> str:
  lines = ['| ' + ' | '.join(header) + ' |',
           '|' + '|'.join('---' for _ in header) + '|']
  lines += ['| ' + ' | '.join(str(c) for c in row) + ' |' for row in rows]
  return '\n'.join(lines)


def _cell_columns(rows):
  """Header and values naming each cell: one column per swept key."""
  keys = list(rows[0]['values']) if rows and rows[0]['values'] else ['fusion']
  names = [k.rsplit('.', 1)[-1] if k.rsplit('.', 1)[-1] not in [
      o.rsplit('.', 1)[-1] for o in keys if o != k] else k for k in keys]
  values = [[str(r['values'].get(k, r['fusion'])) for k in keys] for r in rows]
  return names, values


def _mb(nbytes):
  return '—' if nbytes is None else f'{nbytes / 2**20:.2f}'


def accuracy_table(rows, metrics=None) -> str:
  """Per cell: mean ± CI of the full-set test metrics and the costs; the
  best of the primary metric in bold."""
  metrics = metrics or metrics_of(rows)
  names, cells = _cell_columns(rows)
  s = score(rows)
  best = (max if s.higher else min)(r['test'][s.metric][0] for r in rows)
  body = []
  for r, cell in zip(rows, cells):
    c = r['cost']
    step = c.get('step_seconds')
    vals = [fmt(r['test'][m], 4 if m != 'loss' else 3)
            for m in metrics]
    if s.metric in metrics and r['test'][s.metric][0] == best:
      i = metrics.index(s.metric)
      vals[i] = f'**{vals[i]}**'
    body.append(cell + [r['stage'], r['n']] + vals + [
        f'{c["params"]["total"]:,}',
        f'{c["forward"]["flops"] / 1e9:.4f}' if c['forward']['flops'] else '—',
        '—' if step is None else f'{step * 1e3:.2f}',
        _mb(c['train_step'].get('peak_bytes'))])
  return table(names + ['stage', 'seeds'] + list(metrics) + [
      'params', 'fwd GFLOPs', 'train step ms', 'step peak MB'], body)


def extra_table(rows) -> str:
  """Per cell: the primary metric on the test split and on each extra
  evaluation split (data.extra_eval_splits); '' when there are none."""
  splits = sorted({s for r in rows for s in r.get('extra', {})})
  if not splits:
    return ''
  metric = score(rows).metric
  names, cells = _cell_columns(rows)
  nan = (math.nan,) * 3
  return table(names + ['test'] + splits, [
      cell + [fmt(r['test'].get(metric, nan), 4)] +
      [fmt(r['extra'].get(s, {}).get(metric, nan), 4) for s in splits]
      for r, cell in zip(rows, cells)])


def subset_columns(rows, metric=None):
  """`metric` (default: the primary) then `metric/<subset>` keys, largest
  subsets first."""
  metric = metric or score(rows).metric
  modalities = {m for r in rows for m in r['modalities']}
  is_subset = lambda k: set(k.split('/', 1)[1].split('+')) <= modalities
  keys = sorted({k for r in rows for k in r['test']  # not mae/<target>
                 if k.startswith(metric + '/') and is_subset(k)},
                key=lambda k: (-k.count('+'), k))
  return [metric] + keys


def subset_table(rows, metric=None) -> str:
  metric = metric or score(rows).metric
  names, cells = _cell_columns(rows)
  cols = subset_columns(rows, metric)
  heads = ['all' if c == metric else c.split('/', 1)[1] for c in cols]
  return table(names + heads, [cell + [fmt(r['test'].get(
      c, (math.nan,) * 3)) for c in cols] for r, cell in zip(rows, cells)])


def robustness_summary(rows, group, panels, normalise=False) -> str:
  """Cells x (kind, target) of relative or effective robustness."""
  names, cells = _cell_columns(rows)
  body = [cell[:] for cell in cells]
  for key in panels:
    col = [r[group].get(key, (math.nan,) * 3) for r in rows]
    if normalise:
      norm = stats.minmax([c[0] for c in col])
      col = [(n, math.nan, c[2]) for n, c in zip(norm, col)]
    for b, c in zip(body, col):
      b.append(fmt(c, signed=group == 'effective' and not normalise))
  return table(names + [k.replace('/', ' on ') for k in panels], body)


def curve_table(rows, kind, target) -> str:
  names, cells = _cell_columns(rows)
  key = f'{kind}/{target}'
  body, num = [], 0
  for r, cell in zip(rows, cells):
    curve = r['curves'].get(kind, {}).get(target)
    if curve is None:
      continue
    num = len(curve)
    body.append(cell + [fmt(c) for c in curve] + [
        fmt(r['relative'].get(key, (math.nan,) * 3)),
        fmt(r['effective'].get(key, (math.nan,) * 3), signed=True)])
  return table(names + [f's{s}' for s in range(num)] + [
      'relative', 'effective'], body)


def contribution_table(rows) -> str:
  names, cells = _cell_columns(rows)
  mods = rows[0]['modalities']
  s = score(rows)
  body = []
  for r, cell in zip(rows, cells):
    above = (math.nan if s.chance is None else
             r['test'][s.metric][0] - s.chance, math.nan, r['n'])
    body.append(cell + [fmt(r['shapley'].get(m, (math.nan,) * 3), signed=True)
                        for m in mods] +
                [fmt(r['loo'].get(m, (math.nan,) * 3), signed=True)
                 for m in mods] + [fmt(above, signed=True)])
  return table(names + [f'Shapley {m}' for m in mods] +
               [f'LOO drop {m}' for m in mods] + [f'{s.metric} − chance'],
               body)


def _write(path, text):
  with open(path, 'w') as f:
    f.write(text.rstrip() + '\n')


DEFINITIONS = """\
- **{metric}**: the primary metric of the task ({task}) that every table,
  figure and score below is of; {better} is better.
- **mean ± 95% CI**: mean over seeds ± t(0.975, n−1) · s / √n (Student t,
  s the sample standard deviation); no ± with a single seed.
- **Missing modalities**: the test set scored with only the listed
  modalities present (`present/<m>` False for the others, which each fusion
  method handles as documented in README.md).
- **Relative robustness** (MultiBench, Liang et al. 2021): area under test
  {metric} vs corruption severity 0–5, severity rescaled to [0, 1] (so it is
  a mean {metric}).
- **Effective robustness** (MultiBench): area of f(s) − [LF(s) + f(0) − LF(0)]
  with LF the late-fusion reference (`{reference}`, same other sweep values,
  mean over its seeds): {metric} kept beyond what late fusion would keep
  from the same clean {metric}; positive = degrades less than late fusion
  (negated where lower is better, so this holds).
  MultiBench sums over levels and min-max normalises across methods; the
  normalised columns in robustness.md do the latter.
- **Shapley value** of modality m: exact average over coalitions S of the
  other modalities of v(S ∪ {{m}}) − v(S), weighted |S|!(n−|S|−1)!/n!, where
  v(S) is the test {metric} with only S present and v(∅) its chance value
  (accuracy: 1/C; mAP: the labels' mean rate of positives; not computed
  where the task fixes none). They add up to {metric} − chance.
- **LOO drop** of m: v(all) − v(all without m), negated where lower is
  better: positive = m helps.
- **Pareto front**: cells that no other cell beats on both forward FLOPs
  (lower) and mean test {metric}.
"""


def write_all(workdir, cells, records, costs, meta) -> list[str]:
  """Writes every report file into `workdir`; returns their names."""
  aggregate.derive(cells, records, costs, meta['reference'])
  rows = aggregate.summarize(cells, records, costs)
  written = []

  csv_rows = aggregate.csv_rows(cells, records)
  header = list(dict.fromkeys(k for row in csv_rows for k in row))
  with open(os.path.join(workdir, 'results.csv'), 'w', newline='') as f:
    writer = csv.DictWriter(f, header)
    writer.writeheader()
    writer.writerows(csv_rows)
  written.append('results.csv')

  main = accuracy_table(rows)
  full_metrics = metrics_of(rows)
  subset_tables = '\n\n'.join(
      f'### {m} with some modalities missing\n\n{subset_table(rows, m)}'
      for m in full_metrics if len(subset_columns(rows, m)) > 1)
  extra = extra_table(rows)
  extra_section = (f'## {score(rows).metric} on the other evaluation splits'
                   f'\n\nMean ± 95% CI over seeds.\n\n{extra}'
                   if extra else '')
  _write(os.path.join(workdir, 'results.md'),
         f'# Results: test metrics per cell\n\nMean ± 95% CI over seeds '
         f'(Student t). Costs from `mmfusion.cost` (batch '
         f'{rows[0]["cost"]["batch_size"]}, {rows[0]["cost"]["backend"]}); '
         f'train step ms: median wall time of one compiled step.\n\n{main}'
         f'\n\n{extra_section}\n\n{subset_tables}')
  written.append('results.md')

  s = score(rows)
  bars = f'{s.metric}.png'  # accuracy.png for classification
  plots.accuracy_bars(rows, os.path.join(workdir, bars), s.metric, s.chance)
  front = plots.pareto(rows, os.path.join(workdir, 'pareto.png'), s.metric,
                       s.higher)
  cols = subset_columns(rows)
  plots.missing_modality_heatmap(rows, os.path.join(
      workdir, 'missing_modality.png'), cols)
  written += [bars, 'pareto.png', 'missing_modality.png']

  kinds = [k for k in meta['kinds']
           if any(k in r['curves'] for r in rows)]
  targets = sorted({t for r in rows for k in kinds
                    for t in r['curves'].get(k, {})},
                   key=lambda t: (t == 'all', t))
  panels = [f'{k}/{t}' for k in kinds for t in targets
            if any(t in r['curves'].get(k, {}) for r in rows)]
  if panels:
    plots.robustness_curves(rows, os.path.join(workdir, 'robustness.png'),
                            kinds, targets, s.metric, s.chance)
    written.append('robustness.png')
  skipped = {}  # kind -> {target: why}
  for rec in records:
    for key, why in rec['skipped'].items():
      kind, target = key.split('/', 1)
      skipped.setdefault(kind, {}).setdefault(target, why)
  skipped_text = '\n'.join(
      f'- `{kind}` was skipped on {", ".join(sorted(per))}: '
      f'{next(iter(per.values()))}' for kind, per in sorted(skipped.items()))
  per_curve = '\n\n'.join(
      f'### {p.replace("/", " on ")}\n\nTest {s.metric} at severity 0 (clean) '
      f'.. 5; relative and effective robustness.\n\n'
      f'{curve_table(rows, *p.split("/"))}' for p in panels)
  if panels:
    _write(os.path.join(workdir, 'robustness.md'), '\n\n'.join([
        '# Robustness to test-time corruptions',
        '## Relative robustness\n\n' + robustness_summary(
            rows, 'relative', panels),
        '## Effective robustness (vs ' + meta['reference'] + ')\n\n' +
        robustness_summary(rows, 'effective', panels),
        '## Min-max normalised across cells (as MultiBench reports them)\n\n'
        'Relative:\n\n' + robustness_summary(rows, 'relative', panels, True) +
        '\n\nEffective:\n\n' + robustness_summary(rows, 'effective', panels,
                                                   True),
        '## Curves\n\n' + per_curve, skipped_text]))
    written.append('robustness.md')

  multimodal = len(rows[0]['modalities']) > 1 and any(r['loo'] for r in rows)
  if multimodal:
    plots.contribution_bars(rows, os.path.join(workdir, 'contributions.png'),
                            rows[0]['modalities'], s.metric)
    _write(os.path.join(workdir, 'contributions.md'),
           '# Per-modality contributions\n\nFrom the per-subset test '
           f'{s.metric} (see report.md, Definitions); mean ± 95% CI over '
           f'seeds.\n\n{contribution_table(rows)}')
    written += ['contributions.png', 'contributions.md']

  _write(os.path.join(workdir, 'report.md'), _report(
      rows, meta, main, panels, front, skipped_text, multimodal))
  written.append('report.md')
  return written


def _report(rows, meta, main, panels, front, skipped_text, multimodal) -> str:
  config = meta['config']
  sweeps = '; '.join(f'`{k}` ∈ {{{", ".join(map(str, vs))}}}'
                     for k, vs in meta['sweeps']) or 'none (one cell)'
  seeds = rows[0]['seeds']
  s = score(rows)
  metric = s.metric
  if s.task == 'classification':
    target = (f'{1 / s.chance:.0f} classes, chance accuracy '
              f'{s.chance:.3f}')
  else:
    target = (f'task {s.task}, ranked by test {metric} '
              f'({"higher" if s.higher else "lower"} is better'
              f'{"" if s.chance is None else f"; chance {s.chance:.3f}"})')
  title = ', '.join(sorted({str(config.data.name)} | {
      str(v) for r in rows for k, v in r['values'].items()
      if k == 'data.name'}))
  parts = [
      f'# Ablation: {title}',
      '## Setup\n\n'
      f'- Command: `{meta["command"]}`\n'
      f'- Sweep: {sweeps}; {len(rows)} cells × {meta["seeds"]} seeds '
      f'(seeds {seeds[0]}..{seeds[-1]}'
      f'{", trained together with jax.vmap" if meta["vmap"] else ""}).\n'
      f'- Data: `{config.data.name}`, modalities '
      f'{", ".join(sorted(config.data.modalities))}; {target}.\n'
      f'- Training: {config.total_steps} steps of batch {config.batch_size}, '
      f'{config.optimizer.name} at learning rate '
      f'{config.optimizer.learning_rate}; metrics on the test split at the '
      f'last step.',
      f'## Test {metric}\n\nMean ± 95% CI over seeds; the best {metric} in '
      f'bold. Costs per batch of {rows[0]["cost"]["batch_size"]} on '
      f'{rows[0]["cost"]["backend"]}. Every test metric, and each subset of '
      f'modalities, is in [results.md](results.md); one row per run in '
      f'[results.csv](results.csv).\n\n{main}\n\n![{metric}]({metric}.png)'
      + (f'\n\nOn every evaluation split ({metric}):\n\n{extra_table(rows)}'
         if extra_table(rows) else ''),
      f'## {metric[:1].upper() + metric[1:]} vs compute\n\nPareto front (no '
      f'cell is both cheaper and better on {metric}): ' + ', '.join(
          r['label'] for r, f in zip(rows, front) if f) +
      '.\n\n![pareto](pareto.png)',
      f'## Missing modalities\n\nTest {metric} with only these modalities '
      f'present.\n\n{subset_table(rows)}\n\n'
      '![missing modalities](missing_modality.png)'
      if len(subset_columns(rows)) > 1 else
      '## Missing modalities\n\nNot scored: the task does not score modality '
      'subsets (contrastive towers pair one group with the other).']
  if panels:
    parts.append(
        '## Robustness to test-time corruptions\n\n'
        f'Corruptions of `mmfusion.data.transforms` ({", ".join(meta["kinds"])}'
        ') at severity 0..5 on the test split, on one modality or on all; '
        'per-severity tables and normalised scores in '
        '[robustness.md](robustness.md).\n\nRelative robustness:\n\n' +
        robustness_summary(rows, 'relative', panels) +
        f'\n\nEffective robustness (vs {meta["reference"]}):\n\n' +
        robustness_summary(rows, 'effective', panels) +
        '\n\n![robustness](robustness.png)' +
        (f'\n\n{skipped_text}' if skipped_text else ''))
  else:
    why = ('`mmfusion.data.transforms` is not available in this tree'
           if not meta['kinds_available'] else
           'no corruption applies (or `--corruptions` was empty)')
    parts.append('## Robustness to test-time corruptions\n\nNot measured: '
                 f'{why}. Robustness here is the missing-modality table '
                 'above only.' +
                 (f'\n\n{skipped_text}' if skipped_text else ''))
  if multimodal:
    parts.append('## Per-modality contributions\n\n' +
                 contribution_table(rows) +
                 '\n\n![contributions](contributions.png)')
  parts.append('## Definitions\n\n' + DEFINITIONS.format(
      reference=meta['reference'], metric=metric, task=s.task,
      better='higher' if s.higher else 'lower'))
  if meta.get('notes'):
    parts.append('## Notes\n\n' + meta['notes'].strip())
  return '\n\n'.join(parts)
