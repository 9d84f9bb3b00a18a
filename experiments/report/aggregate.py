"""From per-seed records to per-cell statistics.

A record is one trained model (one seed of one cell): its test metrics, its
corruption curves ({kind: {target: [metric at severity 0..5]}}), the
metric being the primary one of the run's task (`score`). `derive`
adds what each record implies on its own (robustness areas, modality
contributions); `summarize` turns the records of each cell into mean +- 95%
CI over seeds.
"""

import collections
import math

import numpy as np

from experiments.report import stats

# What a report ranks cells by: the task's primary metric, its direction, and
# its value with no modality (None where the task does not fix one).
Score = collections.namedtuple('Score', 'metric higher chance task')


def score(cost: dict) -> Score:
  """The Score of a cell from its cost report (written before tasks: a
  classification's accuracy)."""
  if 'metric' not in cost:
    return Score('accuracy', True, 1.0 / cost['num_classes'], 'classification')
  return Score(cost['metric'], cost['higher_is_better'], cost['chance'],
               cost['task'])


def chance(cost: dict) -> float | None:
  """The primary metric with no input: the value of the empty coalition."""
  return score(cost).chance


def reference_cell(cell, cells, fusion: str):
  """The cell of late-fusion `fusion` that shares `cell`'s other values."""
  others = {k: v for k, v in cell['values'].items() if k != 'model.fusion'}
  for c in cells:
    if c['config'].model.fusion == fusion and all(
        c['values'].get(k) == v for k, v in others.items()):
      return c
  return None


def mean_curves(records) -> dict:
  """{kind: {target: mean accuracy per severity}} over `records`."""
  out = {}
  for kind, per_target in records[0]['curves'].items():
    for target in per_target:
      out.setdefault(kind, {})[target] = np.mean(
          [r['curves'][kind][target] for r in records], axis=0).tolist()
  return out


def derive(cells, records, costs, reference: str):
  """Adds 'relative', 'effective', 'shapley' and 'loo' to each record.

  For a metric where lower is better (MAE) the effective robustness and the
  contributions are negated, so that positive always means better: degrades
  less than late fusion, helps the prediction."""
  by_cell = {c['name']: [r for r in records if r['cell'] == c['name']]
             for c in cells}
  for cell in cells:
    ref = reference_cell(cell, cells, reference)
    ref_curves = mean_curves(by_cell[ref['name']]) if ref and by_cell[
        ref['name']] else {}
    modalities = sorted(cell['config'].data.modalities)
    s = score(costs[cell['name']])
    sign = 1.0 if s.higher else -1.0
    for r in by_cell[cell['name']]:
      r['relative'], r['effective'] = {}, {}
      for kind, per_target in r['curves'].items():
        for target, curve in per_target.items():
          r['relative'][f'{kind}/{target}'] = stats.relative_robustness(curve)
          lf = ref_curves.get(kind, {}).get(target)
          if lf is not None:
            r['effective'][f'{kind}/{target}'] = sign * (
                stats.effective_robustness(curve, lf))
      r['shapley'], r['loo'] = {}, {}
      # Tasks scored on modality subsets only (not contrastive towers).
      if len(modalities) > 1 and f'{s.metric}/{modalities[0]}' in r['test']:
        value = stats.subset_value(r['test'], modalities, s.chance,
                                   metric=s.metric)
        r['loo'] = {m: sign * v for m, v in stats.leave_one_out(
            value, modalities).items()}
        if s.chance is not None:  # Shapley needs v of no modality
          r['shapley'] = stats.shapley_values(value, modalities)


def _ci_dict(dicts) -> dict:
  keys = sorted({k for d in dicts for k in d})
  return {k: stats.mean_ci([d.get(k, math.nan) for d in dicts]) for k in keys}


def extra_splits(records) -> list[str]:
  """The extra evaluation splits every record has, sorted."""
  sets = [set(r.get('extra', {})) for r in records]
  return sorted(set.intersection(*sets)) if sets else []


def summarize(cells, records, costs) -> list[dict]:
  """One row per cell: mean +- CI of every test metric, robustness score,
  contribution and curve point, plus the cell's cost report."""
  from mmfusion import fusion
  rows = []
  for cell in cells:
    rs = [r for r in records if r['cell'] == cell['name']]
    name = cell['config'].model.fusion
    curves = {}
    for kind, per_target in (rs[0]['curves'] if rs else {}).items():
      for target in per_target:
        points = np.asarray([r['curves'][kind][target] for r in rs])
        curves.setdefault(kind, {})[target] = [
            stats.mean_ci(points[:, s]) for s in range(points.shape[1])]
    rows.append({
        'name': cell['name'], 'label': cell['label'], 'values': cell['values'],
        'fusion': name, 'stage': fusion.get_fusion(name).stage,
        'modalities': sorted(cell['config'].data.modalities),
        'seeds': sorted(r['seed'] for r in rs), 'n': len(rs),
        'test': _ci_dict([{k: v for k, v in r['test'].items()
                           if k != 'examples'} for r in rs]),
        'extra': {split: _ci_dict([{k: v for k, v in r['extra'][split].items()
                                    if k != 'examples'} for r in rs])
                  for split in extra_splits(rs)},
        'relative': _ci_dict([r['relative'] for r in rs]),
        'effective': _ci_dict([r['effective'] for r in rs]),
        'shapley': _ci_dict([r['shapley'] for r in rs]),
        'loo': _ci_dict([r['loo'] for r in rs]),
        'curves': curves, 'cost': costs[cell['name']],
        'chance': chance(costs[cell['name']]),
        'run_seconds': [r['run_seconds'] for r in rs]})
  return rows


def csv_rows(cells, records) -> list[dict]:
  """results.csv: one flat row per trained model."""
  keys = [k for k in cells[0]['values']] if cells else []
  values = {c['name']: c['values'] for c in cells}
  labels = {c['name']: c['label'] for c in cells}
  out = []
  for r in records:
    row = {k: values[r['cell']][k] for k in keys}
    row.update(cell=labels[r['cell']], seed=r['seed'], member=r['member'],
               run=r['run'], step=r['step'], num_params=r['num_params'],
               run_seconds=r['run_seconds'])
    for split in ('test', 'validation'):
      row.update({f'{split}/{k}': v for k, v in sorted(r[split].items())})
    for split, metrics in sorted(r.get('extra', {}).items()):
      row.update({f'{split}/{k}': v for k, v in sorted(metrics.items())})
    for kind, per_target in sorted(r['curves'].items()):
      for target, curve in sorted(per_target.items()):
        row.update({f'robust/{kind}/{target}/s{s}': a
                    for s, a in enumerate(curve)})
    for group in ('relative', 'effective', 'shapley', 'loo'):
      row.update({f'{group}/{k}': v for k, v in sorted(r[group].items())})
    out.append(row)
  return out
