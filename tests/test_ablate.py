"""The ablation command: grid, resume, report files, and the report's maths."""

import csv
import glob
import itertools
import json
import os
import re
import shlex
import shutil
import subprocess
import sys

import numpy as np
import pytest
import scipy.stats

from experiments import ablate
from mmfusion.configs import seed as seed_config
from experiments.report import stats
from tests.helpers import ROOT, TINY_DATA, subprocess_env


def _ablate(workdir, data_dir, *flags, variant='uniqueness_image'):
  return subprocess.run(
      [sys.executable, '-m', 'experiments.ablate', f'--workdir={workdir}',
       f'--config=mmfusion/configs/seed.py:{variant},runlocal',
       f'--config.data.data_dir={data_dir}',
       f'--config.data.overrides={TINY_DATA!r}', '--config.batch_size=16',
       '--config.total_steps=8', '--config.eval_every=4',
       '--config.checkpoint_every=4', '--config.optimizer.warmup_steps=2',
       '--compilation_cache=', '--time_steps=2', *flags],
      cwd=ROOT, env=subprocess_env(1), capture_output=True, text=True,
      timeout=300)


# ------------------------------------------------------------ End to end ---

@pytest.mark.slow  # an ablation of several runs in a child process
def test_sweep_trains_reports_and_resumes_only_what_is_missing(tmp_path,
                                                                data_dir):
  workdir = tmp_path / 'ablation'
  sweep = '--sweep=model.fusion=concat,late_logits'
  first = _ablate(workdir, data_dir, sweep, '--seeds=2')
  assert first.returncode == 0, first.stderr
  assert '0 finished already, 4 to train' in first.stdout
  assert '4/4 runs, 2/2 cells done' in first.stdout and 'ETA' in first.stdout
  for name in ('report.md', 'results.md', 'results.csv', 'robustness.md',
               'contributions.md', 'accuracy.png', 'pareto.png',
               'missing_modality.png', 'robustness.png', 'contributions.png'):
    assert (workdir / name).stat().st_size > 0, name
  with open(workdir / 'accuracy.png', 'rb') as f:
    assert f.read(8) == b'\x89PNG\r\n\x1a\n'
  report = (workdir / 'report.md').read_text()
  for section in ('## Test accuracy', '## Missing modalities',
                  '## Robustness to test-time corruptions',
                  '## Per-modality contributions', '![pareto](pareto.png)'):
    assert section in report

  with open(workdir / 'results.csv') as f:
    rows = list(csv.DictReader(f))
  assert sorted((r['model.fusion'], r['seed']) for r in rows) == [
      ('concat', '0'), ('concat', '1'), ('late_logits', '0'),
      ('late_logits', '1')]
  for r in rows:  # severity 0 of a corruption is the clean test set
    assert float(r['robust/gaussian_noise/all/s0']) == float(
        r['test/accuracy'])
    shapley = float(r['shapley/image']) + float(r['shapley/text'])
    assert shapley == pytest.approx(float(r['test/accuracy']) - 0.1)
  assert rows[0]['test/loss'] != rows[1]['test/loss']  # two seeds

  # Interrupt one cell: its results and its latest checkpoint are gone.
  cells = workdir / 'cells'
  keep = next((cells / 'model.fusion=concat').glob('seed*'))
  redo = next((cells / 'model.fusion=late_logits').glob('seed*'))
  os.remove(redo / 'results.json')
  shutil.rmtree(redo / 'checkpoints' / '8')
  kept_before = (keep / 'results.json').stat().st_mtime_ns
  second = _ablate(workdir, data_dir, sweep, '--seeds=2')
  assert second.returncode == 0, second.stderr
  assert '2 finished already, 2 to train' in second.stdout
  assert 'training concat' not in second.stdout
  assert (keep / 'results.json').stat().st_mtime_ns == kept_before
  assert 'Resuming from step 4' in (redo / 'train.log').read_text()
  assert json.loads((redo / 'results.json').read_text())['step'] == 8
  with open(workdir / 'results.csv') as f:
    assert len(list(csv.DictReader(f))) == 4


@pytest.mark.slow  # an ablation of several runs in a child process
def test_a_regression_sweep_is_ranked_by_its_tasks_metric(tmp_path,
                                                         data_dir):
  workdir = tmp_path / 'ablation'
  result = _ablate(workdir, data_dir, '--sweep=model.fusion=concat,late_logits',
                   '--seeds=1', variant='regression_synergy')
  assert result.returncode == 0, result.stderr
  assert 'test mae' in result.stdout
  report = (workdir / 'report.md').read_text()
  assert '## Test mae' in report and 'lower is better' in report
  assert (workdir / 'mae.png').stat().st_size > 0
  with open(workdir / 'results.csv') as f:
    rows = list(csv.DictReader(f))
  assert {r['model.fusion'] for r in rows} == {'concat', 'late_logits'}
  for r in rows:  # MAE under corruption starts from the clean test MAE
    assert float(r['robust/gaussian_noise/all/s0']) == float(r['test/mae'])
    assert 'shapley/image' not in r  # no chance value fixes v(no modality)
    # Lower is better: a modality's drop is the error it saves.
    assert float(r['loo/image']) == pytest.approx(
        float(r['test/mae/text']) - float(r['test/mae']))


@pytest.mark.parametrize('flag, message', [
    ('--sweep=model.fusoin=concat', "--sweep key 'model.fusoin' is not in "
     "the config"),
    ('--sweep=total_steps=10,ten', "--sweep value 'ten' for total_steps is "
     'not an int'),
    ('--sweep=model.fusion', '--sweep takes KEY=V1,V2,...'),
])
def test_bad_sweeps_fail_in_one_sentence(flag, message, tmp_path):
  result = _ablate(tmp_path / 'w', tmp_path / 'data', flag)
  assert result.returncode == 2
  assert result.stderr.startswith(f'mmfusion: error: {message}'), result.stderr
  assert len(result.stderr.splitlines()) == 1
  assert not (tmp_path / 'w').exists()


# ------------------------------------------------------- make reports ---

_STUB = """#!/bin/sh
[ "$2" = experiments.ablate ] || exit 0  # pip: nothing to install
shift 2
printf '%s\\n' "$@" --- >> "$0.argv"
"""

_PARSE = """
import json, sys
from absl import flags
from experiments import ablate
from mmfusion.runtime import cli
for argv in json.load(sys.stdin):
  for name in [n for n in flags.FLAGS if n.startswith('config.')]:
    delattr(flags.FLAGS, name)  # the last command's overrides
  flags.FLAGS.unparse_flags()
  sys.argv = ['ablate', *argv]  # config_flags reads overrides from sys.argv
  cli.parse_flags(sys.argv)
  sweeps = [ablate.parse_sweep(cli.config(), s) for s in flags.FLAGS.sweep]
  ablate.make_cells(cli.config(), sweeps)
"""


def _make_reports_commands(tmp_path):
  """Each `experiments.ablate` argv of `make reports`, run by a stand-in."""
  stub = tmp_path / 'python'
  stub.write_text(_STUB)
  stub.chmod(0o755)
  # The stamps `make tuxpaint` would fetch, present so that it fetches none.
  (tmp_path / 'usr' / 'share' / 'tuxpaint' / 'stamps' / 'symbols').mkdir(
      parents=True)
  subprocess.run(['make', '-s', 'reports', f'PY={stub}', f'VENV={tmp_path}',
                  f'TUXPAINT_DIR={tmp_path}'],
                 cwd=ROOT, check=True, capture_output=True, timeout=60)
  text = (tmp_path / 'python.argv').read_text()
  return [c.splitlines() for c in text.split('---\n') if c.strip()]


def _key_flags(argv):
  """The flags that shape the results: no paths of outputs, notes, data;
  `--seeds` as the value that takes effect (the last given, or the
  flag's default)."""
  skip = ('--workdir=', '--notes=', '--config.data.data_dir=', '--seeds=')
  seeds = [a for a in argv if a.startswith('--seeds=')]
  seeds = seeds[-1] if seeds else f'--seeds={ablate._SEEDS.default}'
  return sorted([a for a in argv if not a.startswith(skip)] + [seeds])


def test_make_reports_reruns_every_committed_report(tmp_path):
  commands = _make_reports_commands(tmp_path)
  reports = os.path.join(ROOT, 'experiments', 'reports')
  by_dir = {os.path.join(ROOT, next(a[10:] for a in c if a.startswith(
      '--workdir='))): c for c in commands}
  report_dirs = {os.path.dirname(p) for p in glob.glob(
      os.path.join(reports, '**', 'report.md'), recursive=True)}
  assert set(by_dir) == report_dirs
  for path, argv in by_dir.items():
    with open(os.path.join(path, 'report.md')) as f:
      old = re.search(r'Command: `python -m experiments.ablate (.*)`', f.read())
    old = old.group(1).replace('experiments/configs/', 'mmfusion/configs/')
    assert _key_flags(argv) == _key_flags(shlex.split(old)), path
    notes = os.path.join(path, 'notes.md')
    assert (f'--notes={os.path.relpath(notes, ROOT)}' in argv) == (
        os.path.exists(notes)), path
  parsed = subprocess.run([sys.executable, '-c', _PARSE], cwd=ROOT,
                          input=json.dumps(commands), capture_output=True,
                          text=True, timeout=60)
  assert parsed.returncode == 0, parsed.stderr


# ------------------------------------------------------------------ Grid ---

def test_sweep_values_take_the_type_of_their_field():
  config = seed_config.get_config('runlocal')
  config.lock()
  assert ablate.parse_sweep(config, 'model.fusion=concat,tensor') == (
      'model.fusion', ['concat', 'tensor'])
  assert ablate.parse_sweep(config, 'batch_size=8,16')[1] == [8, 16]
  assert ablate.parse_sweep(config, 'optimizer.learning_rate=1e-3,3')[1] == [
      1e-3, 3.0]
  assert ablate.parse_sweep(config, 'fsdp=true,False')[1] == [True, False]
  assert ablate.parse_sweep(config, 'model.head_hidden=(),(64,),(32, 32)')[
      1] == [(), (64,), (32, 32)]
  assert ablate.parse_sweep(config, "data.overrides={'noise': 1.0},{}")[1] == [
      {'noise': 1.0}, {}]


def test_several_sweeps_multiply_into_a_grid(tmp_path):
  config = seed_config.get_config('runlocal')
  config.lock()
  sweeps = [('model.fusion', ['concat', 'tensor', 'early']),
            ('data.name', ['synthetic_interactions/synergy',
                           'synthetic_interactions/redundancy'])]
  cells = ablate.make_cells(config, sweeps)
  assert [(c['config'].model.fusion, c['config'].data.name) for c in cells] == [
      (f, d) for f, d in itertools.product(*[v for _, v in sweeps])]
  assert len({c['name'] for c in cells}) == 6
  assert config.model.fusion == 'concat'  # the base config is untouched
  runs = ablate.plan_runs(cells[:1], 3, False, str(tmp_path))
  assert [(r['config'].seed, os.path.basename(r['dir'])) for r in runs] == [
      (0, 'seed_0'), (1, 'seed_1'), (2, 'seed_2')]
  (run,) = ablate.plan_runs(cells[:1], 3, True, str(tmp_path))
  assert (run['config'].vmap.size, run['seeds']) == (3, [0, 1, 2])


# ----------------------------------------------------------------- Maths ---

@pytest.mark.parametrize('values', [[0.9, 0.92], [0.5, 0.61, 0.55, 0.7, 0.58],
                                    [1.0, 1.0, 1.0]])
def test_mean_ci_is_the_student_t_interval(values):
  mean, half, n = stats.mean_ci(values)
  assert n == len(values) and mean == pytest.approx(np.mean(values))
  if np.std(values) == 0:  # no spread (scipy returns NaN bounds here)
    assert half == 0
    return
  lo, hi = scipy.stats.t.interval(0.95, len(values) - 1, loc=np.mean(values),
                                  scale=scipy.stats.sem(values))
  assert (mean - half, mean + half) == pytest.approx((lo, hi))


def test_mean_ci_by_hand_and_with_one_seed():
  # Two values 0 and 1: s = 0.7071, sem = 0.5, t(0.975, 1) = 12.706.
  assert stats.mean_ci([0.0, 1.0])[1] == pytest.approx(12.7062 * 0.5, rel=1e-4)
  mean, half, n = stats.mean_ci([0.8])
  assert (mean, n) == (0.8, 1) and np.isnan(half)


def test_shapley_of_an_additive_game_is_each_marginal():
  gain = {'image': 0.3, 'text': 0.1, 'tabular': 0.05}
  value = lambda s: 0.1 + sum(gain[m] for m in s)
  assert stats.shapley_values(value, gain) == pytest.approx(gain)
  assert stats.leave_one_out(value, gain) == pytest.approx(gain)


def test_shapley_splits_pure_synergy_and_adds_up():
  # XOR-like: neither modality alone beats chance, both together are perfect.
  value = lambda s: 1.0 if len(s) == 2 else 0.1
  phi = stats.shapley_values(value, ['image', 'text'])
  assert phi == pytest.approx({'image': 0.45, 'text': 0.45})
  assert stats.leave_one_out(value, ['image', 'text']) == pytest.approx(
      {'image': 0.9, 'text': 0.9})
  # A run's per-subset accuracies as the game; values add up to v(all) - v(0).
  test = {'accuracy': 0.9, 'accuracy/image': 0.6, 'accuracy/text': 0.2}
  phi = stats.shapley_values(stats.subset_value(test, ['image', 'text'], 0.1),
                             ['image', 'text'])
  assert phi == pytest.approx({'image': 0.5 * (0.5 + 0.7),
                               'text': 0.5 * (0.1 + 0.3)})
  assert sum(phi.values()) == pytest.approx(0.9 - 0.1)


def test_pareto_front_by_hand():
  gflops = [1.0, 2.0, 2.0, 3.0, 4.0, 0.5, float('nan')]
  acc = [0.80, 0.90, 0.85, 0.90, 0.95, 0.50, 0.99]
  # (2, .85) loses to (2, .90); (3, .90) to (2, .90); NaN is never on it.
  assert stats.pareto_front(gflops, acc) == [True, True, False, False, True,
                                             True, False]


def test_robustness_areas_by_hand():
  flat = [0.8] * 6
  assert stats.relative_robustness(flat) == pytest.approx(0.8)
  linear = [1.0, 0.8, 0.6, 0.4, 0.2, 0.0]
  assert stats.relative_robustness(linear) == pytest.approx(0.5)
  # Degrading like late fusion, from any clean accuracy, is effective 0.
  lf = [0.7, 0.6, 0.5, 0.4, 0.3, 0.2]
  shifted = [a + 0.2 for a in lf]
  assert stats.effective_robustness(shifted, lf) == pytest.approx(0)
  assert stats.effective_robustness(flat, lf) == pytest.approx(0.25)
  assert stats.minmax([0.2, 0.4, 0.3]) == pytest.approx([0.0, 1.0, 0.5])


def test_extra_eval_splits_get_their_own_columns():
  from experiments.report import aggregate, document
  records = [{'cell': 'c', 'seed': s, 'member': s, 'step': 4, 'run': 'r',
              'num_params': 1, 'run_seconds': 1.0,
              'validation': {'accuracy': 0.5}, 'test': {'accuracy': t},
              'extra': {'test_speech_shift': {'accuracy': x, 'examples': 20}},
              'curves': {}, 'relative': {}, 'effective': {}, 'shapley': {},
              'loo': {}} for s, t, x in ((0, 0.9, 0.6), (1, 0.8, 0.7))]
  rows = [{'values': {'model.fusion': 'concat'}, 'fusion': 'concat',
           'cost': {'num_classes': 10},
           'test': aggregate._ci_dict([r['test'] for r in records]),
           'extra': {'test_speech_shift': aggregate._ci_dict(
               [r['extra']['test_speech_shift'] for r in records])}}]
  text = document.extra_table(rows)
  assert 'test_speech_shift' in text.splitlines()[0]
  mean, ci = rows[0]['extra']['test_speech_shift']['accuracy'][:2]
  assert mean == pytest.approx(0.65) and ci > 0
  assert document.fmt(rows[0]['extra']['test_speech_shift']['accuracy'], 4) in text
  assert aggregate.extra_splits(records) == ['test_speech_shift']
  cells = [{'name': 'c', 'label': 'concat', 'values': {'model.fusion': 'concat'}}]
  row = aggregate.csv_rows(cells, records)[0]
  assert row['test_speech_shift/accuracy'] == 0.6
  assert document.extra_table([{**rows[0], 'extra': {}}]) == ''


def test_combine_puts_several_ablations_in_one_table(tmp_path):
  for name, accs, shift in (('a', (0.9, 0.8), True), ('b', (0.5, 0.7), False)):
    cell = tmp_path / name / 'cells' / 'model.fusion=concat'
    cell.mkdir(parents=True)
    (cell / 'cost.json').write_text(json.dumps(
        {'step_seconds': 0.25, 'train_step': {'peak_bytes': 2**21}}))
    header = 'cell,run,test/accuracy' + (',test_speech_shift/accuracy'
                                         if shift else '')
    lines = [header] + [f'concat,cells/model.fusion=concat/seeds_0-1,{a}' +
                        (f',{a - 0.2}' if shift else '') for a in accs]
    (tmp_path / name / 'results.csv').write_text('\n'.join(lines) + '\n')
  out = tmp_path / 'summary.md'
  result = subprocess.run(
      [sys.executable, '-m', 'experiments.report.combine', f'--out={out}',
       f'one={tmp_path / "a"}', f'two={tmp_path / "b"}'], cwd=ROOT,
      env=subprocess_env(1), capture_output=True, text=True, timeout=60)
  assert result.returncode == 0, result.stderr
  lines = out.read_text().splitlines()
  assert '| run | seeds | test accuracy | test_speech_shift accuracy |' in (
      '\n'.join(lines))
  one = next(l for l in lines if l.startswith('| one '))
  two = next(l for l in lines if l.startswith('| two '))
  ci = stats.mean_ci([0.9, 0.8])[1]
  assert f'0.8500 ± {ci:.4f}' in one and f'0.6500 ± {ci:.4f}' in one
  assert two.split(' | ')[3] == '—' and '250.0 | 2.0' in two
  bad = subprocess.run(
      [sys.executable, '-m', 'experiments.report.combine', f'--out={out}',
       str(tmp_path / 'a')], cwd=ROOT, env=subprocess_env(1),
      capture_output=True, text=True, timeout=60)
  assert bad.returncode != 0 and 'NAME=WORKDIR' in bad.stderr
