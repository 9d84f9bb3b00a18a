"""Ablation studies in one command: a grid of configs x seeds, trained,
scored for robustness and written up as tables and plots.

  python -m experiments.ablate --config=mmfusion/configs/seed.py:synergy \\
      --sweep='model.fusion=concat,tensor,late_logits' [--sweep='KEY=V1,V2'] \\
      --seeds=3 --workdir=DIR

Several --sweep flags multiply into a grid of cells; each value is read with
the type of the config field it replaces. Every (cell, seed) trains through
`mmfusion.train.train_and_evaluate` with `seed` = config.seed + i: one run per
seed, or all of a cell's seeds in one vmapped program when the config has a
`vmap` key (`--novmap_seeds` turns that off). Layout of DIR:

  cells/<cell>/seed_<s>/ or cells/<cell>/seeds_<a>-<b>/   one training run
      (train.py's workdir, plus train.log, ablate.json, robustness.json)
  cells/<cell>/cost.json        parameters, FLOPs, memory, train-step time
  results.csv, results.md, robustness.md, contributions.md, report.md, *.png

Re-running the same command skips finished runs (results.json with the
config's step count), resumes half-done ones from their checkpoints, and
rebuilds the report.
"""

import ast
import contextlib
import copy
import datetime
import hashlib
import itertools
import json
import os
import re
import sys
import time

from absl import app, flags, logging
import ml_collections

from mmfusion.runtime import cli

_SWEEP = flags.DEFINE_multi_string(
    'sweep', [], 'KEY=V1,V2,...: values of one config key; several --sweep '
    'flags multiply into a grid, e.g. --sweep=model.fusion=concat,tensor.')
_SEEDS = flags.DEFINE_integer('seeds', 3, 'Seeds per cell: config.seed + i.')
_VMAP = flags.DEFINE_bool(
    'vmap_seeds', True, "Train a cell's seeds in one vmapped program when the "
    'config has a `vmap` key.')
_CORRUPTIONS = flags.DEFINE_list(
    'corruptions', None, 'Test-time corruptions to score (default: every '
    'kind in mmfusion.data.transforms; empty: none).')
_REFERENCE = flags.DEFINE_string(
    'reference_fusion', 'late_logits', 'The late-fusion baseline of effective '
    'robustness.')
_TIME_STEPS = flags.DEFINE_integer(
    'time_steps', 20,
    'Train steps timed per cell for the cost table (0: none).')
_VERBOSE = flags.DEFINE_bool(
    'verbose', False, "Show each run's training output instead of only writing "
    'it to the run\'s train.log.')


# ------------------------------------------------------------------ Grid ---

def _split_values(raw: str) -> list[str]:
  """`raw` cut at commas outside brackets and quotes: '(),(64,)' -> 2."""
  out, depth, quote, start = [], 0, None, 0
  for i, ch in enumerate(raw):
    if quote:
      quote = None if ch == quote else quote
    elif ch in '\'"':
      quote = ch
    elif ch in '([{':
      depth += 1
    elif ch in ')]}':
      depth -= 1
    elif ch == ',' and depth == 0:
      out.append(raw[start:i].strip())
      start = i + 1
  out.append(raw[start:].strip())
  return out


def _field(config, key: str):
  """(parent ConfigDict, leaf name, field type) of dotted `key`, or a fail."""
  node, parts = config, key.split('.')
  for i, part in enumerate(parts):
    if not isinstance(node, ml_collections.ConfigDict) or part not in node:
      where = '.'.join(parts[:i]) or 'the config'
      close = [k for k in (node.keys() if isinstance(
          node, ml_collections.ConfigDict) else [])
               if k.startswith(part[:3])]
      hint = (f' (did you mean {".".join(parts[:i] + [close[0]])}?)'
              if close else '')
      cli.fail(f'--sweep key {key!r} is not in the config: {where} has no '
               f'{part!r}{hint}; sweep a key the config file defines.')
    if i < len(parts) - 1:
      node = node[part]
  leaf = parts[-1]
  value = node[leaf]
  if isinstance(value, ml_collections.ConfigDict):
    return node, leaf, dict
  return node, leaf, node.get_ref(leaf).get_type()


def _parse(token: str, kind: type, key: str):
  """`token` read as a value of type `kind` for config field `key`."""
  def bad(what):
    cli.fail(f'--sweep value {token!r} for {key} is not {what}; give values '
             f'like the config\'s own, separated by commas.')
  if kind is bool:
    low = token.lower()
    if low not in ('true', 'false', '1', '0', 'yes', 'no'):
      bad('a bool (true or false)')
    return low in ('true', '1', 'yes')
  if kind is int:
    if not re.fullmatch(r'[+-]?\d+', token):
      bad('an int')
    return int(token)
  if kind is float:
    try:
      return float(token)
    except ValueError:
      bad('a float')
  if kind is str:
    quoted = len(token) > 1 and token[0] == token[-1] and token[0] in '\'"'
    return token[1:-1] if quoted else token
  try:
    value = ast.literal_eval(token)
  except (ValueError, SyntaxError):
    bad(f'a Python {kind.__name__} literal')
  if kind in (tuple, list) and isinstance(value, (tuple, list)):
    return kind(value)
  if kind is dict and isinstance(value, dict):
    return value
  if kind in (tuple, list, dict):
    bad(f'a {kind.__name__}')
  return value  # a placeholder without a type takes any literal


def parse_sweep(config, spec: str):
  """(key, [values]) of one `KEY=V1,V2,...` flag, typed by the config field."""
  key, sep, raw = spec.partition('=')
  key = key.strip()
  if not sep or not key or not raw.strip():
    cli.fail(f'--sweep takes KEY=V1,V2,... (e.g. '
             f'--sweep=model.fusion=concat,tensor); got {spec!r}.')
  _, _, kind = _field(config, key)
  values = [_parse(t, kind, key) for t in _split_values(raw)]
  seen = [repr(v) for v in values]
  if len(set(seen)) < len(seen):
    cli.fail(f'--sweep {key} lists a value twice ({raw}); give each once.')
  return key, values


def _slug(value) -> str:
  """`value` as a directory-name part: '(64, 64)' -> '64-64', () -> 'empty'."""
  text = re.sub(r'[^A-Za-z0-9._+-]+', '-', str(value)).strip('-')
  return text or ('none' if value is None else 'empty')


def make_cells(config, sweeps) -> list[dict]:
  """The grid: one {'values', 'name', 'label', 'config'} per combination."""
  keys = [k for k, _ in sweeps]
  dup = sorted({k for k in keys if keys.count(k) > 1})
  if dup:
    cli.fail(f'--sweep names {dup[0]} twice; give all its values in one flag.')
  cells, names = [], set()
  for combo in itertools.product(*[vs for _, vs in sweeps]):
    values = dict(zip(keys, combo))
    cell_config = copy.deepcopy(config)
    for key, value in values.items():
      node, leaf, _ = _field(cell_config, key)
      node[leaf] = value
    name = ','.join(f'{k}={_slug(v)}' for k, v in values.items()) or 'base'
    if name in names:  # two values with the same slug
      name += '-' + hashlib.sha1(repr(combo).encode()).hexdigest()[:6]
    names.add(name)
    label = ', '.join(str(v) for v in combo) or config.model.fusion
    cells.append({'values': values, 'name': name, 'label': label,
                  'config': cell_config})
  return cells


def plan_runs(cells, seeds: int, vmap: bool, workdir: str) -> list[dict]:
  """Training runs: all of a cell's seeds in one when `vmap`, else one each."""
  runs = []
  for cell in cells:
    base = cell['config'].seed
    if vmap:
      config = copy.deepcopy(cell['config'])
      config.vmap.size, config.vmap.key = seeds, 'seed'
      runs.append({'cell': cell, 'seeds': list(range(base, base + seeds)),
                   'config': config, 'dir': os.path.join(
                       workdir, 'cells', cell['name'],
                       f'seeds_{base}-{base + seeds - 1}')})
      continue
    for seed in range(base, base + seeds):
      config = copy.deepcopy(cell['config'])
      config.seed = seed
      if 'vmap' in config:
        config.vmap.size = 1
      runs.append({'cell': cell, 'seeds': [seed], 'config': config,
                   'dir': os.path.join(workdir, 'cells', cell['name'],
                                       f'seed_{seed}')})
  return runs


# --------------------------------------------------------------- Running ---

def _read_json(path):
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


def finished(run) -> dict | None:
  """The run's results.json if it holds every seed at the final step."""
  results = _read_json(os.path.join(run['dir'], 'results.json'))
  if not results or results.get('step') != run['config'].total_steps:
    return None
  if len(run['seeds']) > 1 and len(results.get('members', ())) != len(
      run['seeds']):
    return None
  return results


def _quote(arg: str) -> str:
  """`arg` as a shell would need it: quoted when it holds special characters."""
  return arg if re.fullmatch(r'[\w./:=,+-]*', arg) else f'"{arg}"'


def _clock(seconds: float) -> str:
  return str(datetime.timedelta(seconds=round(seconds)))


@contextlib.contextmanager
def _output_to(path):
  """Sends stdout and stderr (file descriptors 1 and 2, so every writer's,
  progress bars included) to `path`, appended."""
  if path is None:
    yield
    return
  sys.stdout.flush()
  sys.stderr.flush()
  saved = [os.dup(1), os.dup(2)]
  try:
    with open(path, 'a') as log:
      os.dup2(log.fileno(), 1)
      os.dup2(log.fileno(), 2)
      yield
  finally:
    sys.stdout.flush()
    sys.stderr.flush()
    for fd, copy_of in zip((1, 2), saved):
      os.dup2(copy_of, fd)
      os.close(copy_of)


def train_all(runs, verbose: bool = False):
  """Trains every unfinished run, printing overall progress and an ETA."""
  from mmfusion import tasks, train
  from mmfusion.runtime import errors
  total = sum(len(r['seeds']) for r in runs)
  cells_total = len({r['cell']['name'] for r in runs})
  todo = [r for r in runs if not finished(r)]
  done = total - sum(len(r['seeds']) for r in todo)
  print(f'ablate: {cells_total} cells x {total // cells_total} seeds = {total} '
        f'runs; {done} finished already, {total - done} to train.', flush=True)
  t_start, trained_seeds, trained_s = time.perf_counter(), 0, 0.0
  for run in todo:
    what = f'{run["cell"]["label"]} seed {",".join(map(str, run["seeds"]))}'
    print(f'ablate: training {what} in {run["dir"]}', flush=True)
    os.makedirs(run['dir'], exist_ok=True)
    stale = os.path.join(run['dir'], 'robustness.json')
    if os.path.exists(stale):
      os.remove(stale)
    t0 = time.perf_counter()
    try:
      with _output_to(None if verbose else os.path.join(run['dir'],
                                                        'train.log')):
        summary = train.train_and_evaluate(run['config'], run['dir'])
    except errors.UserError as e:  # say which run, keep it one sentence
      raise errors.UserError(f'{what} ({run["dir"]}): {e}') from None
    seconds = time.perf_counter() - t0
    if summary.get('preempted'):
      print(f'ablate: preempted during {what}; run the same command again '
            f'to resume.', flush=True)
      sys.exit(1)
    with open(os.path.join(run['dir'], 'ablate.json'), 'w') as f:
      json.dump({'train_seconds': seconds, 'seeds': run['seeds']}, f)
    done += len(run['seeds'])
    trained_seeds += len(run['seeds'])
    trained_s += seconds
    cells_done = cells_total - len({r['cell']['name'] for r in runs
                                    if not finished(r)})
    eta = trained_s / trained_seeds * (total - done)
    metric = tasks.TASKS[summary.get('task', 'classification')].PRIMARY
    print(f'ablate: {done}/{total} runs, {cells_done}/{cells_total} cells '
          f'done | {what}: {seconds:.1f} s, test {metric} '
          f'{summary["test"][metric]:.4f} | elapsed '
          f'{_clock(time.perf_counter() - t_start)} | ETA {_clock(eta)}',
          flush=True)


def cell_cost(cell, workdir: str, time_steps: int) -> dict:
  """cost.report of the cell's config plus a train-step time, cached."""
  path = os.path.join(workdir, 'cells', cell['name'], 'cost.json')
  cached = _read_json(path)
  if cached and cached.get('time_steps') == time_steps:
    return cached
  from experiments.report import timing
  from mmfusion import cost
  config = copy.deepcopy(cell['config'])
  if 'vmap' in config:
    config.vmap.size = 1
  out = cost.report(config)
  out['time_steps'] = time_steps
  out['step_seconds'] = (timing.train_step_seconds(config, time_steps)
                         if time_steps else None)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, 'w') as f:
    json.dump(out, f, indent=2)
  return out


def robustness(run, kinds) -> dict:
  """The run's corruption curves, cached in robustness.json."""
  from experiments.report import evaluation
  path = os.path.join(run['dir'], 'robustness.json')
  cached = _read_json(path)
  if cached and cached.get('kinds') == list(kinds) and cached.get(
      'step') == run['config'].total_steps:
    return cached
  out = evaluation.corruption_curves(run['config'], run['dir'], kinds=kinds)
  out['kinds'] = list(kinds)
  with open(path, 'w') as f:
    json.dump(out, f, indent=2)
  return out


def collect(runs, kinds, workdir: str) -> list[dict]:
  """One record per trained model (seed): its results and robustness."""
  records = []
  for i, run in enumerate(runs):
    print(f'ablate: scoring robustness {i + 1}/{len(runs)}: '
          f'{run["cell"]["label"]}', flush=True)
    results = finished(run)
    rob = robustness(run, kinds)
    timing = _read_json(os.path.join(run['dir'], 'ablate.json')) or {}
    extra_splits = [s for s in run['cell']['config'].data.extra_eval_splits
                    if s not in ('validation', 'test')]
    members = results.get('members') or [
        {'member': None, 'seed': run['seeds'][0], **results}]
    for j, m in enumerate(members):
      records.append({
          'cell': run['cell']['name'], 'seed': m['seed'],
          'member': m['member'], 'step': results['step'],
          'run': os.path.relpath(run['dir'], workdir),
          'num_params': results['num_params'],
          'run_seconds': timing.get('train_seconds'),
          'validation': m['validation'], 'test': m['test'],
          # data.extra_eval_splits (shifted test sets), as the run wrote them
          'extra': {s: m[s] for s in extra_splits if s in m},
          'curves': rob['members'][j], 'skipped': rob['skipped']})
  return records


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  cli.tune_malloc()
  config = cli.config()
  sweeps = [parse_sweep(config, s) for s in _SWEEP.value]
  if _SEEDS.value < 1:
    cli.fail(f'--seeds must be at least 1, got {_SEEDS.value}.')
  cells = make_cells(config, sweeps)
  workdir = os.path.abspath(cli.WORKDIR.value)
  notes = None
  if cli.NOTES.value:
    try:
      with open(cli.NOTES.value) as f:
        notes = f.read()
    except OSError as e:
      cli.fail(f'cannot read the --notes file {cli.NOTES.value!r} ({e.strerror}); '
               f'pass a Markdown file or leave the flag out.')

  # JAX only after flag parsing, so XLA_FLAGS set by a launcher apply.
  cli.start_distributed()
  from experiments.report import document, evaluation  # pylint: disable=g-import-not-at-top
  from mmfusion import build
  from mmfusion.runtime import errors
  cli.use_compilation_cache()
  logging.set_verbosity(logging.ERROR)  # TFDS and orbax chatter
  kinds = (evaluation.available_kinds() if _CORRUPTIONS.value is None
           else tuple(_CORRUPTIONS.value))
  unknown = sorted(set(kinds) - set(evaluation.available_kinds()))
  if unknown:
    cli.fail(f'--corruptions has {unknown}, which mmfusion.data.transforms '
             f'does not offer; choose from: '
             f'{", ".join(evaluation.available_kinds()) or "none"}.')
  try:
    for cell in cells:  # fail before any training on a bad name
      build.run(cell['config'])
    vmap = _VMAP.value and _SEEDS.value > 1 and 'vmap' in config
    runs = plan_runs(cells, _SEEDS.value, vmap, workdir)
    train_all(runs, _VERBOSE.value)
    records = collect(runs, kinds, workdir)
    print('ablate: costing each cell', flush=True)
    costs = {c['name']: cell_cost(c, workdir, _TIME_STEPS.value)
             for c in cells}
    meta = {'command': ' '.join(['python -m experiments.ablate'] + [
        _quote(a) for a in sys.argv[1:]]), 'config': config, 'sweeps': sweeps,
            'seeds': _SEEDS.value, 'vmap': vmap, 'kinds': list(kinds),
            'kinds_available': bool(evaluation.available_kinds()),
            'reference': _REFERENCE.value, 'notes': notes}
    written = document.write_all(workdir, cells, records, costs, meta)
  except errors.UserError as e:
    cli.fail(str(e))
  print(f'ablate: wrote {", ".join(written)} to {workdir}', flush=True)


if __name__ == '__main__':
  for name in cli.RUN_FLAGS + cli.MULTIHOST_FLAGS + ('notes',):
    flags.declare_key_flag(name)
  flags.mark_flags_as_required(['config', 'workdir'])
  app.run(main, flags_parser=cli.parse_flags)
