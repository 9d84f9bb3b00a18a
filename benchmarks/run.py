r"""mmfusion's train step against the same models in PyTorch eager, side by side.

  python -m benchmarks.run [--models=seed,av,transformer] [--fusions=all] \
      [--steps=30] [--flax_rows] [--out=benchmarks/RESULTS.md]

For every model (`specs.MODELS`; the seed model once per fusion method with
--fusions): compile seconds, FLOPs and peak memory of one jitted
`train.train_step`, then the median step time over --steps timed steps after
--warmup, alternating in --rounds blocks with the PyTorch port of the same
model (when torch is installed and the model has a port), so that both see the
same machine load; with --flax_rows each model built from `model.kernels`
again with `config.model.kernels=flax` (stock flax/JAX ops) beside its
config's own ('auto': xla_cpu on CPU). Then each model's input pipeline rate
against its step's demand, and K vmapped seeds against K sequential runs.
Writes one Markdown file with the machine, the versions and this exact
command. Runs on any JAX backend; the PyTorch side runs on CPU.

With --isolate (the default) each timed row runs in a fresh process (`--row`)
with its own PyTorch child: what a process ran before moves its later step
times (an av step measured 22.6-29.2 ms in one process), so no row inherits
another's heap, threads or compiled programs.
"""

import datetime
import gc
import importlib.util
import json
import math
import os
import shlex
import statistics
import subprocess
import sys
import time

from absl import app, flags, logging

from benchmarks import report
from mmfusion.runtime import cli

_MODELS = flags.DEFINE_list('models', ['seed', 'av', 'transformer'],
                            'Models to time (benchmarks/specs.py MODELS).')
_FUSIONS = flags.DEFINE_list(
    'fusions', ['all'], 'Fusion methods to time on the seed model: "all" for '
    'every registered one, "" for none.')
_STEPS = flags.DEFINE_integer('steps', 30, 'Timed steps per model and framework.')
_WARMUP = flags.DEFINE_integer('warmup', 3, 'Untimed steps first.')
_ROUNDS = flags.DEFINE_integer('rounds', 3,
                               'Blocks alternating mmfusion and PyTorch.')
_BATCH = flags.DEFINE_integer('batch_size', 0, "0: each config's own.")
_TORCH = flags.DEFINE_bool('torch', True, 'Time the PyTorch ports (if installed).')
_TORCH_CHILD = flags.DEFINE_bool(
    'torch_process', True, 'Run PyTorch in a child process (False: in this one).')
_FLAX_ROWS = flags.DEFINE_bool(
    'flax_rows', False, 'Also time each model with CNN or attention modules '
    'with --config.model.kernels=flax (stock flax/JAX ops): the A/B of the '
    "kernel switch against the config's own kernels.")
_QUIET = flags.DEFINE_float(
    'quiet_wait', 30.0, 'Before each timed block, wait up to this many seconds '
    'for other processes to leave the CPU idle (Linux; 0: do not wait).')
_PIPELINE = flags.DEFINE_integer(
    'pipeline_batches', 200, "Batches of each --models dataset's input "
    'pipeline to time (0: skip).')
_DATA_DIR = flags.DEFINE_string('data_dir', None,
                                'TFDS data dir of the seed dataset.')
_VMAP = flags.DEFINE_integer('vmap', 5, 'K of the vmapped-seeds comparison (0: skip).')
_VMAP_MODELS = flags.DEFINE_list('vmap_models', ['seed', 'av'], 'Its models.')
_ISOLATE = flags.DEFINE_bool(
    'isolate', True, 'Time each row in a fresh process of its own (and a '
    'fresh PyTorch child); False: every row in this process.')
_ROW = flags.DEFINE_string(
    'row', None, 'Time one row and print it as JSON, then exit (what '
    '--isolate runs in each child): MODEL, MODEL/FUSION, either +flax '
    '(with config.model.kernels=flax), or vmap:MODEL.')
_REPEATS = flags.DEFINE_integer(
    'repeats', 1, 'Passes over all rows; each row reports the median of its '
    'repeats and the range of its mmfusion / PyTorch ratios.')

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROW_MARK = 'benchmarks.run row: '  # the child's result line on stdout

BUSY = []  # other processes' share of the cores before each timed block


def _cpu_ticks():
  with open('/proc/stat') as f:
    fields = [int(v) for v in f.readline().split()[1:]]
  return sum(fields) - fields[3] - fields[4], sum(fields)  # busy, total


def busy_fraction(seconds: float = 0.3) -> float | None:
  """Share of all cores busy over `seconds` while this process sleeps."""
  try:
    b0, t0 = _cpu_ticks()
    time.sleep(seconds)
    b1, t1 = _cpu_ticks()
  except OSError:
    return None
  return (b1 - b0) / max(t1 - t0, 1)


def wait_for_quiet(max_seconds: float, threshold: float = 0.1):
  """Sleeps until other processes use < `threshold` of the cores (or time runs
  out), so that a timed block does not share the cores with them."""
  if max_seconds <= 0:
    return
  deadline = time.monotonic() + max_seconds
  while True:
    busy = busy_fraction()
    if busy is None or busy < threshold or time.monotonic() > deadline:
      BUSY.append(busy)
      return


def median_ms(times):
  return 1e3 * sorted(times)[len(times) // 2] if times else None


def time_model(spec, worker, steps, warmup, rounds,
               quiet: float = 0.0) -> dict:
  """One row: mmfusion and (where ported) PyTorch on the same batch."""
  from benchmarks import jax_bench  # pylint: disable=g-import-not-at-top
  runner = jax_bench.JaxRunner(spec)
  runner.run(warmup)
  row = {'name': spec.name, 'kernels': runner.kernels,
         'batch': spec.batch_size, 'params': runner.num_params,
         'compile_s': runner.cost['compile_s'],
         'gflops': (runner.cost['flops'] or 0) / 1e9,
         'peak_mb': (runner.peak_bytes or 0) / 2**20, 'note': ''}
  torch_ok = False
  if worker is not None:
    try:
      built = worker.call('build', spec.name, spec.config.to_dict(),
                          runner.batch_np, runner.num_classes)
      row['torch_params'] = built['param_counts']['total']
      worker.call('run', spec.name, warmup)
      torch_ok = True
    except NotImplementedError as e:
      row['note'] = str(e)
  jax_times, torch_times = [], []
  per_round = math.ceil(steps / rounds)
  seen = len(BUSY)
  for _ in range(rounds):
    wait_for_quiet(quiet)
    # Objects alive now (earlier rows' traces and executables) leave the
    # collector's scans: in a process that had run 8 seed models, an av step
    # took 28.1 ms without this and 23.8 ms with it.
    gc.collect()
    gc.freeze()
    jax_times += runner.run(per_round)
    if torch_ok:
      wait_for_quiet(quiet)
      torch_times += worker.call('run', spec.name, per_round)['times']
  if torch_ok:
    worker.call('drop', spec.name)
  row['jax_ms'], row['torch_ms'] = median_ms(jax_times), median_ms(torch_times)
  row['busy'] = max((b for b in BUSY[seen:] if b is not None), default=None)
  return row


def pipeline_rate(spec, batches: int, data_dir, quiet: float = 0.0) -> dict:
  """Examples/s of `pipeline.train_batches` (Grain, no workers, as
  `mmfusion.main` runs it) on the dataset of `spec`'s config, built first if
  it is not in `data_dir`."""
  from mmfusion.data import pipeline  # pylint: disable=g-import-not-at-top
  config = spec.config
  if data_dir:
    config.data.data_dir = data_dir
  builder = pipeline.get_builder(config.data)
  pipeline.prepare(builder)
  it = iter(pipeline.train_batches(
      builder.as_data_source(split='train'), batch_size=spec.batch_size,
      seed=0, modalities=config.data.modalities))
  for _ in range(5):
    next(it)
  wait_for_quiet(quiet)
  t0 = time.perf_counter()
  for _ in range(batches):
    next(it)
  return {'name': spec.name, 'dataset': config.data.name,
          'batch': spec.batch_size,
          'examples_s': spec.batch_size * batches / (time.perf_counter() - t0)}


def vmap_row(spec, k, steps, warmup, quiet: float = 0.0) -> dict:
  """K seeds in one program (as train.py runs config.vmap) vs one seed."""
  from benchmarks import jax_bench  # pylint: disable=g-import-not-at-top
  one, many = jax_bench.JaxRunner(spec), jax_bench.JaxRunner(spec, vmap_size=k)
  one.run(warmup)
  many.run(warmup)
  wait_for_quiet(quiet)
  t1 = median_ms(one.run(steps))
  wait_for_quiet(quiet)
  tk = median_ms(many.run(steps))
  return {'name': spec.name, 'k': k, 'one_ms': t1, 'vmap_ms': tk,
          'compile_s': many.cost['compile_s'], 'speedup': k * t1 / tk}


def merge_repeats(rows: list[dict]) -> dict:
  """One row from the same row's repeats: the median of each measured number
  (the most other-process CPU for 'busy'), with the per-repeat mmfusion /
  PyTorch ratios kept as 'ratios'."""
  if len(rows) == 1:
    return rows[0]
  out = dict(rows[0])
  for key, first in rows[0].items():
    values = [r[key] for r in rows if r.get(key) is not None]
    if (isinstance(first, bool) or not isinstance(first, (int, float)) or
        len(set(values)) == 1):
      continue
    out[key] = max(values) if key == 'busy' else statistics.median(values)
  out['ratios'] = [r['jax_ms'] / r['torch_ms'] for r in rows
                   if r.get('jax_ms') and r.get('torch_ms')]
  return out


def torch_worker():
  """(a PyTorch `torch_bench.Worker` or None, a line saying which)."""
  if not _TORCH.value:
    return None, 'not run (--torch=false)'
  if importlib.util.find_spec('torch') is None:
    return None, 'not installed'
  from benchmarks import torch_bench  # pylint: disable=g-import-not-at-top
  worker = torch_bench.Worker(in_process=not _TORCH_CHILD.value,
                              tune_malloc=cli.wants_tune_malloc())
  i = worker.call('info')
  return worker, (f'{i["version"]} on CPU, {i["threads"]} threads, in '
                  f'{"a child" if _TORCH_CHILD.value else "the same"} process')


def measure(key: str, worker) -> dict:
  """The row named `key` (see --row), PyTorch's side on `worker` (or none)."""
  from benchmarks import specs  # pylint: disable=g-import-not-at-top
  if key.startswith('vmap:'):
    return vmap_row(specs.get_spec(key[5:], batch_size=_BATCH.value),
                    _VMAP.value, _STEPS.value, _WARMUP.value, _QUIET.value)
  name, flax = (key[:-5], True) if key.endswith('+flax') else (key, False)
  model, _, fusion_name = name.partition('/')
  spec = specs.get_spec(model, fusion_name or None, _BATCH.value,
                        kernels='flax' if flax else None)
  return time_model(spec, worker, _STEPS.value, _WARMUP.value, _ROUNDS.value,
                    _QUIET.value)


def child_row(key: str) -> dict:
  """One row measured in this process with a PyTorch child of its own."""
  worker, torch_line = (None, None) if key.startswith('vmap:') else (
      torch_worker())
  try:
    row = measure(key, worker)
  finally:
    if worker is not None:
      worker.close()
  return {'row': row, 'busy': BUSY, 'torch': torch_line}


def row_in_child(key: str) -> dict:
  """`child_row(key)` run by a fresh `benchmarks.run --row=key` process that
  gets this process's flags."""
  args = [a for a in sys.argv[1:] if not a.startswith(('--row=', '--isolate',
                                                       '--noisolate'))]
  proc = subprocess.run(
      [sys.executable, '-m', 'benchmarks.run', *args, f'--row={key}'],
      cwd=ROOT, capture_output=True, text=True)
  lines = [l for l in proc.stdout.splitlines() if l.startswith(ROW_MARK)]
  if proc.returncode or not lines:
    raise RuntimeError(f'row {key}: its process exited with status '
                       f'{proc.returncode}:\n{proc.stderr[-3000:]}')
  return json.loads(lines[-1][len(ROW_MARK):])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  if (cli.NOTES.value and not _ROW.value and
      not os.path.isfile(cli.NOTES.value)):
    raise app.UsageError(f'--notes={cli.NOTES.value}: no such file; pass the '
                         'Markdown file to append, e.g. benchmarks/notes.md.')
  if _REPEATS.value < 1:
    raise app.UsageError(f'--repeats={_REPEATS.value}: pass 1 or more passes '
                         'over the rows.')
  tuned = cli.tune_malloc()  # before JAX starts; the PyTorch child too
  import jax  # pylint: disable=g-import-not-at-top
  from benchmarks import specs  # pylint: disable=g-import-not-at-top
  from mmfusion import fusion  # pylint: disable=g-import-not-at-top
  from mmfusion.nn import kernels  # pylint: disable=g-import-not-at-top
  logging.set_verbosity(logging.ERROR)  # TFDS chatter
  jax.config.update('jax_enable_compilation_cache', False)  # time compiles
  if _ROW.value:  # a child of --isolate
    print(ROW_MARK + json.dumps(child_row(_ROW.value)), flush=True)
    return
  load0 = os.getloadavg()[0]
  worker, torch_line = (None, None) if _ISOLATE.value else torch_worker()

  def run(key):
    if _ISOLATE.value:
      out = row_in_child(key)
      BUSY.extend(out['busy'])
      nonlocal torch_line
      torch_line = torch_line or out['torch']
      row = out['row']
    else:
      row = measure(key, worker)
    if key.startswith('vmap:'):
      print(f'vmap {row["name"]}: {row["speedup"]:.2f}x', flush=True)
    else:
      print(report.step_table([row]).splitlines()[-1], flush=True)
    return row

  # The small seed models first: with --noisolate, once this process has run
  # the CNN models it steps them up to 3x slower (seed/concat 0.35 -> 1.15 ms;
  # PyTorch's child 0.70 -> 0.90 ms): that would say more about the order.
  models = sorted(_MODELS.value, key=lambda name: name != 'seed')
  fusions = list(fusion.FUSIONS) if _FUSIONS.value == ['all'] else _FUSIONS.value
  model_keys = {name: [name] + ([name + '+flax'] if _FLAX_ROWS.value and
                                specs.takes_kernels(specs.get_spec(name))
                                else [])
                for name in models}
  fusion_keys = [f'seed/{f}' for f in fusions]
  vmap_keys = ([f'vmap:{name}' for name in _VMAP_MODELS.value]
               if _VMAP.value > 1 else [])
  keys = (model_keys.get('seed', []) + fusion_keys +
          [k for name in models if name != 'seed' for k in model_keys[name]] +
          vmap_keys)
  # Repeats are whole passes over the rows, so that each row's repeats see
  # the machine at different times.
  passes = [{key: run(key) for key in keys} for _ in range(_REPEATS.value)]
  merged = {key: merge_repeats([p[key] for p in passes]) for key in keys}
  if worker is not None:
    worker.close()
  rows = [merged[k] for name in _MODELS.value for k in model_keys[name]]
  fusion_rows = [merged[k] for k in fusion_keys]
  vmaps = [merged[k] for k in vmap_keys]

  pipes = []
  for name in _MODELS.value if _PIPELINE.value else ():
    spec = specs.get_spec(name, batch_size=_BATCH.value)
    pipes.append(pipeline_rate(spec, _PIPELINE.value, _DATA_DIR.value,
                               _QUIET.value))
    row = next(r for r in rows if r['name'] == name)
    pipes[-1]['step_examples_s'] = report.ex_s(row['batch'], row['jax_ms'])
    print(f'pipeline {name}: {pipes[-1]["examples_s"]:,.0f} examples/s',
          flush=True)
  info = {
      'command': 'python -m benchmarks.run ' + ' '.join(
          shlex.quote(a) for a in sys.argv[1:]),
      'date': datetime.date.today().isoformat(),
      'backend': specs.backend_summary(),
      'torch': torch_line or (
          'not run (--torch=false)' if not _TORCH.value else 'not installed'
          if importlib.util.find_spec('torch') is None else
          'not used by these rows'),
      'load': (load0, os.getloadavg()[0]), 'busy': report.busy_summary(BUSY),
      'steps': _STEPS.value, 'warmup': _WARMUP.value, 'rounds': _ROUNDS.value,
      'isolation': ('each row (and the K-seeds rows) timed in a fresh process '
                    'with a fresh PyTorch child' if _ISOLATE.value else
                    'every row timed in one process, in table order'),
      'repeats': (f'Each row was measured in {_REPEATS.value} passes over all '
                  'rows: the numbers are the medians of its passes, the ratio '
                  'the median of the per-pass ratios with their range in '
                  'brackets' if _REPEATS.value > 1 else 'One pass over the rows'),
      'malloc': 'on' if tuned else 'off',
      'kernels': kernels.resolve('auto').name}
  text = report.markdown(rows, fusion_rows, pipes, vmaps, info)
  if cli.NOTES.value:
    with open(cli.NOTES.value) as f:
      text += '\n' + f.read().strip()
  out = 'benchmarks/RESULTS.md' if cli.OUT.value is None else cli.OUT.value
  if out:
    with open(out, 'w') as f:
      f.write(text + '\n')
  print('\n' + text)


if __name__ == '__main__':
  app.run(main)
