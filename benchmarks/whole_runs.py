r"""K seeds as K runs one after another, against one run of K vmapped seeds.

  python -m benchmarks.whole_runs [--run_config=seed --run_config=av_digits] \
      [--k=5] [--set=total_steps=300 --set=data.data_dir=DIR] [--runs_dir=DIR]

Times whole `mmfusion.main` processes, as a user would run them: start-up,
data, compile, training, evaluation, checkpoints. The sequential side runs
seeds 0..K-1 one after another; the vmapped side runs once with
`--config.vmap.size=K`. Each side starts with its own empty compilation cache
(the sequential runs share theirs, as repeated runs do). Prints a Markdown
table: each side's wall time, their ratio (issue 7's target: at most 0.5x) and
the mean test accuracy of the K seeds on each side.
"""

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from absl import app, flags

_CONFIGS = flags.DEFINE_multi_string(
    'run_config', ['seed', 'av_digits'],
    'A config under mmfusion/configs/: NAME or NAME:ARG (e.g. '
    'seed:synergy); repeat the flag for several.')
_K = flags.DEFINE_integer('k', 5, 'Seeds per side.')
_SET = flags.DEFINE_multi_string(
    'set', [], 'KEY=VALUE passed to every run as --config.KEY=VALUE, e.g. '
    'total_steps=300 or data.data_dir=DIR.')
_RUNS_DIR = flags.DEFINE_string(
    'runs_dir', None, 'Where the runs go (default: a temporary directory); '
    "its <config>/ folders are emptied first, so no run resumes.")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main_command(config: str, workdir: str, cache: str, overrides: list[str]):
  """The `mmfusion.main` command line of one run; `config` is NAME[:ARG]."""
  name, _, arg = config.partition(':')
  return [sys.executable, '-m', 'mmfusion.main',
          f'--config=mmfusion/configs/{name}.py{":" + arg if arg else ""}',
          f'--workdir={workdir}', f'--compilation_cache={cache}',
          *(f'--config.{kv}' for kv in overrides)]


def timed_run(command: list[str]) -> float:
  """Wall seconds of one process; a failed run raises with its stderr's tail."""
  t0 = time.perf_counter()
  result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
  seconds = time.perf_counter() - t0
  if result.returncode:
    raise RuntimeError(f'{" ".join(command)} failed:\n{result.stderr[-3000:]}')
  return seconds


def seed_accuracies(workdir: str) -> list[float]:
  """Test accuracy of each seed trained in `workdir` (one, or K members)."""
  with open(os.path.join(workdir, 'results.json')) as f:
    summary = json.load(f)
  members = summary.get('members') or [summary]
  return [m['test']['accuracy'] for m in members]


def compare(config: str, k: int, root: str, overrides: list[str]) -> dict:
  """Wall time and accuracies of K sequential runs and of one vmapped run."""
  here = os.path.join(root, config.replace(':', '_').replace(',', '_'))
  shutil.rmtree(here, ignore_errors=True)  # no resuming, empty caches
  seq_s, seq_acc = [], []
  for seed in range(k):
    workdir = os.path.join(here, f'seq{seed}')
    seq_s.append(timed_run(main_command(
        config, workdir, os.path.join(here, 'cache_seq'),
        [*overrides, f'seed={seed}'])))
    seq_acc += seed_accuracies(workdir)
  workdir = os.path.join(here, 'vmap')
  vmap_s = timed_run(main_command(
      config, workdir, os.path.join(here, 'cache_vmap'),
      [*overrides, 'seed=0', f'vmap.size={k}']))
  return {'config': config, 'k': k, 'sequential_s': seq_s, 'vmap_s': vmap_s,
          'ratio': vmap_s / sum(seq_s), 'seq_acc': statistics.mean(seq_acc),
          'vmap_acc': statistics.mean(seed_accuracies(workdir))}


def table(rows: list[dict]) -> str:
  lines = ['| config | K | K sequential runs, s (each) | one vmapped run, s | '
           'ratio (target <= 0.5) | mean test accuracy, sequential / vmapped |',
           '|---|---|---|---|---|---|']
  for r in rows:
    each = ', '.join(f'{s:.1f}' for s in r['sequential_s'])
    lines.append(
        f'| {r["config"]} | {r["k"]} | {sum(r["sequential_s"]):.1f} ({each}) '
        f'| {r["vmap_s"]:.1f} | {r["ratio"]:.2f} | '
        f'{r["seq_acc"]:.4f} / {r["vmap_acc"]:.4f} |')
  return '\n'.join(lines)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  if _K.value < 2:
    raise app.UsageError(f'--k must be at least 2, got {_K.value}.')
  bad = [kv for kv in _SET.value if '=' not in kv]
  if bad:
    raise app.UsageError(f'--set={bad[0]} has no "=": write KEY=VALUE, e.g. '
                         '--set=total_steps=300.')
  overrides = list(_SET.value)
  with tempfile.TemporaryDirectory() as tmp:
    root = _RUNS_DIR.value or tmp
    rows = []
    for config in _CONFIGS.value:
      rows.append(compare(config, _K.value, root, overrides))
      print(table(rows[-1:]).splitlines()[-1], flush=True)
  print('\n' + table(rows))


if __name__ == '__main__':
  app.run(main)
