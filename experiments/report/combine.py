r"""One table across several ablation workdirs: every cell of each, with the
primary metric on each evaluation split and the cell's costs.

  python -m experiments.report.combine --out=DIR/summary.md \
      --title='Pretrained vs scratch' NAME=WORKDIR [NAME=WORKDIR ...]

Each WORKDIR is an `experiments.ablate` output (its results.csv and
cells/*/cost.json); NAME labels its rows. Splits a workdir did not evaluate
show as '—'. Mean ± 95% CI over seeds (Student t), as the reports give them.
"""

import csv
import json
import math
import os

from absl import app, flags

from experiments.report import document, stats
from mmfusion.runtime import cli

_TITLE = flags.DEFINE_string('title', 'Combined results', 'Its heading.')
_METRIC = flags.DEFINE_string('metric', 'accuracy',
                              'The metric of every split column.')


def _rows(path: str) -> list[dict]:
  with open(os.path.join(path, 'results.csv'), newline='') as f:
    return list(csv.DictReader(f))


def _cost(path: str, cell_dir: str) -> dict:
  with open(os.path.join(path, 'cells', cell_dir, 'cost.json')) as f:
    return json.load(f)


def cells(name: str, path: str, metric: str) -> list[dict]:
  """One entry per cell of the workdir: label, n, {split: (mean, ci, n)},
  train step ms and peak MB."""
  rows = _rows(path)
  out = []
  for label in dict.fromkeys(r['cell'] for r in rows):
    mine = [r for r in rows if r['cell'] == label]
    splits = sorted({k.rsplit('/', 1)[0] for k in mine[0]
                     if k.endswith('/' + metric) and k.count('/') == 1})
    cell_dir = mine[0]['run'].split('/')[1]  # cells/<cell>/seeds_...
    cost = _cost(path, cell_dir)
    out.append({
        'name': name if len(set(r['cell'] for r in rows)) == 1 else
                f'{name} {label}',
        'n': len(mine),
        'splits': {s: stats.mean_ci([float(r[f'{s}/{metric}']) for r in mine
                                     if r.get(f'{s}/{metric}')])
                   for s in splits},
        'step_ms': cost.get('step_seconds') and cost['step_seconds'] * 1e3,
        'peak_mb': cost['train_step'].get('peak_bytes') and
                   cost['train_step']['peak_bytes'] / 2**20})
  return out


def table(entries, metric: str) -> str:
  order = ['test'] + sorted({s for e in entries for s in e['splits']} -
                            {'test', 'validation'})
  nan = (math.nan,) * 3
  body = [[e['name'], e['n']] +
          [document.fmt(e['splits'].get(s, nan), 4)
           if s in e['splits'] else '—' for s in order] +
          ['—' if e['step_ms'] is None else f'{e["step_ms"]:.1f}',
           '—' if e['peak_mb'] is None else f'{e["peak_mb"]:.1f}']
          for e in entries]
  return document.table(['run', 'seeds'] + [f'{s} {metric}' for s in order] +
                        ['train step ms', 'step peak MB'], body)


def main(argv):
  entries = []
  for arg in argv[1:]:
    name, sep, path = arg.partition('=')
    if not sep or not os.path.exists(os.path.join(path, 'results.csv')):
      raise app.UsageError(f'{arg!r} is not NAME=WORKDIR of an ablation '
                           f'(a folder with results.csv); run '
                           f'experiments.ablate there first.')
    entries += cells(name, path, _METRIC.value)
  if not entries or not cli.OUT.value:
    raise app.UsageError('name at least one NAME=WORKDIR, and the file to '
                         'write as --out.')
  text = (f'# {_TITLE.value}\n\nMean ± 95% CI over seeds of each ablation '
          f'below (Student t); train step time and peak memory from each '
          f'cell\'s cost report (one model, batch of its config).\n\n'
          f'{table(entries, _METRIC.value)}\n')
  with open(cli.OUT.value, 'w') as f:
    f.write(text)
  print(f'combine: wrote {cli.OUT.value}')


if __name__ == '__main__':
  app.run(main)
