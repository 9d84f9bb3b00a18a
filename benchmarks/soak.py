r"""Soak: a run SIGKILLed many times at random moments ends as an uninterrupted one.

  python -m benchmarks.soak --target=main [--kills=20] [--total_steps=400] \
      [--checkpoint_every=5] [--workdir=DIR] [--tfds_dir=DIR] \
      [--out=benchmarks/SOAK.md]
  python -m benchmarks.soak --target=ablate [--kills=10] [--total_steps=150] \
      [--ablate_seeds=2] [--ablate_sweep=model.fusion=concat,sum,late_logits] ...

--target=main: `python -m mmfusion.main` on the tiny seed config of
tests/helpers.py, once uninterrupted (WORKDIR/whole), then the same command
in WORKDIR/killed started, SIGKILLed (its whole process group) at a random
moment and started again, --kills times, then left to finish. About
--write_fraction of the kills are aimed at a checkpoint write: after the
attempt printed its first progress or `Resuming` line the soak watches
checkpoints/ and best/ for an `*.orbax-checkpoint-tmp*` directory and kills
a few milliseconds after one appears (at the end of its window if none
does); the others fall at a uniformly random time after that line. Each
window is 2 / (kills left + 1) of the work left, so the kills spread over
the whole run: the uninterrupted run's timings, from the killed run's last
logged step (main) or from the files it wrote so far (ablate: results.json,
robustness.json, cost.json, the newest checkpoint). Then it compares every leaf of the final parameters
(`np.array_equal`; the largest |difference| too), `metrics.jsonl` record by
record (exactly one train record per step 1..total_steps, no half line, the
same values in the same order) and results.json.

--target=ablate: `python -m experiments.ablate` on a small grid, the same
way (--kills restarts of the whole command, which skips finished runs and
resumes half-done ones); compares results.csv without its timing column
(run_seconds) and each training run's final parameters, metrics.jsonl and
results.json.

Every attempt's output is kept in WORKDIR/logs/, and both workdirs are kept,
so a difference can be traced to the kill that made it. Exit status 1 when
anything differs (or fewer kills landed than asked). --out appends a Markdown
section: the figures, this command, the machine and its load average.
"""

import csv
import datetime
import glob
import json
import os
import random
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time

from absl import app, flags, logging

from benchmarks import report
from mmfusion.runtime import cli

_TARGET = flags.DEFINE_enum('target', 'main', ['main', 'ablate'],
                            'What to kill: mmfusion.main or experiments.ablate.')
_KILLS = flags.DEFINE_integer('kills', None,
                              'SIGKILLs over the run (default: 20 main, 10 ablate).')
_TOTAL = flags.DEFINE_integer('total_steps', None,
                              'config.total_steps (default: 400 main, 150 ablate).')
_CKPT = flags.DEFINE_integer('checkpoint_every', 5, 'config.checkpoint_every.')
_EVAL = flags.DEFINE_integer('eval_every', None,
                             'config.eval_every (default: total_steps // 4).')
_WRITE_FRACTION = flags.DEFINE_float(
    'write_fraction', 1 / 3, 'Share of the kills aimed at a checkpoint write.')
_SEEDS = flags.DEFINE_integer('ablate_seeds', 2, '--target=ablate: its --seeds.')
_SWEEP = flags.DEFINE_string('ablate_sweep', 'model.fusion=concat,sum,late_logits',
                             '--target=ablate: its --sweep.')
_DEVICES = flags.DEFINE_integer('devices', 1, 'Fake CPU devices of each run.')
_RNG_SEED = flags.DEFINE_integer(
    'kill_seed', None, 'Seed of the kill moments (default: a fresh one, printed).')
_DATA_DIR = flags.DEFINE_string(
    'tfds_dir', None, 'TFDS data dir (default: WORKDIR/tfds); the tiny '
    'dataset is built on first use.')
_TIMEOUT = flags.DEFINE_integer('attempt_timeout', 900,
                                'Seconds one attempt may run.')
_ALONGSIDE = flags.DEFINE_bool(
    'alongside', False, 'Run the uninterrupted run at the same time as the '
    'first killed attempts (faster on a machine with cores to spare).')

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TMP_MARK = '.orbax-checkpoint-tmp'
DONE = r'is already complete at step'
PROGRESS = re.compile(r'^\[[#.]*\] (\d+)/(\d+) ')
TIMING_COLUMNS = ('run_seconds',)  # results.csv columns that are wall times


# -------------------------------------------------------------- Attempts ---

class Attempt:
  """One child process: its output teed to a log file, watched for lines."""

  def __init__(self, command, log_path, ready: re.Pattern, devices: int):
    from tests.helpers import subprocess_env  # pylint: disable=g-import-not-at-top
    self.log_path = log_path
    self.ready_at = None  # monotonic time of the first `ready` line
    self.ended_at = None
    self.lines = []
    self._ready = ready
    self.t0 = time.monotonic()
    self._log = open(log_path, 'w')
    # Own process group: a kill takes every process of the run at once, as a
    # machine going away would.
    self.proc = subprocess.Popen(
        command, cwd=ROOT, env=subprocess_env(devices), stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, start_new_session=True)
    self._reader = threading.Thread(target=self._read, daemon=True)
    self._reader.start()

  def _read(self):
    for line in self.proc.stdout:
      now = time.monotonic()
      self._log.write(f'{now - self.t0:9.3f} {line}')
      self._log.flush()
      self.lines.append((now, line.rstrip('\n')))
      if self.ready_at is None and self._ready.search(line):
        self.ready_at, self.ready_wall = now, time.time()
    self.ended_at = time.monotonic()  # the process closed its output: gone

  def wait_ready(self, timeout: float) -> bool:
    """True once the ready line came; False if the process ended first."""
    deadline = time.monotonic() + timeout
    while self.ready_at is None:
      if self.proc.poll() is not None or time.monotonic() > deadline:
        self._reader.join(5)
        return self.ready_at is not None
      time.sleep(0.01)
    return True

  def kill(self):
    try:
      os.killpg(self.proc.pid, signal.SIGKILL)
    except ProcessLookupError:
      pass
    return self.finish(60)

  def finish(self, timeout: float) -> int:
    try:
      rc = self.proc.wait(timeout)
    except subprocess.TimeoutExpired:
      os.killpg(self.proc.pid, signal.SIGKILL)
      rc = self.proc.wait()
    self._reader.join(10)
    self._log.close()
    return rc

  def text(self) -> str:
    return '\n'.join(line for _, line in self.lines)

  def first(self, pattern: str):
    """Monotonic time of the first line matching `pattern`, or None."""
    return next((t for t, line in self.lines if re.search(pattern, line)),
                None)


def _listdir(path):
  try:
    return os.listdir(path)
  except OSError:
    return []


def tmp_entries(dirs) -> set[tuple[str, int]]:
  """(path, inode) of orbax's half-written step directories under `dirs`
  (the inode tells a step's temporary directory made again from the one a
  kill left)."""
  found = set()
  for d in dirs:
    try:
      with os.scandir(d) as entries:
        for e in entries:
          if TMP_MARK in e.name:
            found.add((e.path, e.inode()))
    except OSError:
      continue
  return found


# --------------------------------------------------------------- Targets ---

class Main:
  """`python -m mmfusion.main` on the tiny seed config."""

  name = 'main'
  ready = re.compile(r'^\[[#.]*\] \d+/\d+ |^Resuming from step')

  def __init__(self, data_dir, total, checkpoint_every, eval_every):
    self.data_dir, self.total = data_dir, total
    self.flags = (f'--config.total_steps={total}',
                  f'--config.checkpoint_every={checkpoint_every}',
                  f'--config.eval_every={eval_every}', '--config.log_every=1')

  def command(self, workdir):
    from tests.helpers import main_command  # pylint: disable=g-import-not-at-top
    return main_command(workdir, self.data_dir, *self.flags)

  def watched(self, workdir):
    return [os.path.join(workdir, 'checkpoints'), os.path.join(workdir, 'best')]

  def runs(self, workdir):
    return {'.': workdir}

  def calibrate(self, attempt: Attempt, _):
    """Seconds per step and after the last step, from the whole run."""
    steps = [(t, int(m.group(1))) for t, line in attempt.lines
             if (m := PROGRESS.search(line))]
    (t_first, s_first), (t_last, s_last) = steps[0], steps[-1]
    self.per_step = (t_last - t_first) / max(s_last - s_first, 1)
    # After the last step: the final evaluation, up to results.json.
    self.tail = (attempt.first(r'^Results: ') or attempt.lines[-1][0]) - t_last
    compile_from = attempt.first(r'^Training from step')
    self.startup = t_first - compile_from if compile_from else 0.0

  def remaining(self, workdir, attempt):
    """Seconds of work left after the ready line, from the last logged step
    (and the compile still to come when the ready line was `Resuming`)."""
    done = 0
    try:
      with open(os.path.join(workdir, 'metrics.jsonl')) as f:
        for line in f:
          if '"split": "train"' in line:
            done = max(done, int(line.split('"step": ')[1].split(',')[0]))
    except (OSError, IndexError, ValueError):
      pass
    resumed = attempt.first(r'^Resuming from step') is not None
    return (self.startup * resumed + self.per_step * (self.total - done) +
            self.tail)

  def where(self, attempt, _):
    """Where the kill found the run: its last progress step."""
    return f'at step {_last_step(attempt.lines)}'

  def said(self, attempts, _):
    """The restarts' output, where they say how they resumed."""
    return '\n'.join(a.text() for a in attempts[1:])


class Ablate:
  """`python -m experiments.ablate` on a small grid of tiny seed runs."""

  name = 'ablate'
  ready = re.compile(r'^ablate: ')

  def __init__(self, data_dir, total, checkpoint_every, eval_every, seeds,
               sweep):
    from tests.helpers import TINY_DATA  # pylint: disable=g-import-not-at-top
    self.total = total
    self.flags = (
        '--config=mmfusion/configs/seed.py:uniqueness_image,runlocal',
        f'--config.data.data_dir={data_dir}',
        f'--config.data.overrides={TINY_DATA!r}', '--config.batch_size=16',
        f'--config.total_steps={total}', f'--config.eval_every={eval_every}',
        f'--config.checkpoint_every={checkpoint_every}',
        '--config.optimizer.warmup_steps=2', '--compilation_cache=',
        '--time_steps=2', f'--seeds={seeds}', f'--sweep={sweep}')

  def command(self, workdir):
    return [sys.executable, '-m', 'experiments.ablate', f'--workdir={workdir}',
            *self.flags]

  def watched(self, workdir):
    return [d for run in self.runs(workdir).values()
            for d in (os.path.join(run, 'checkpoints'),
                      os.path.join(run, 'best'))]

  def runs(self, workdir):
    return {os.path.relpath(d, workdir): d for d in sorted(
        glob.glob(os.path.join(workdir, 'cells', '*', 'seed*')))}

  def where(self, attempt, workdir):
    """The command's last line and, while training, the run's last step."""
    said = [l for _, l in attempt.lines if l.startswith('ablate: ')]
    if not said:
      return 'before its first line'
    last = said[-1]
    m = re.match(r'ablate: training (.*) in (\S+)$', last)
    if not m:
      return f'after "{last[:60]}"'
    try:
      with open(os.path.join(m.group(2), 'train.log')) as f:
        lines = [(0, l) for l in f.read().splitlines()]
    except OSError:
      lines = []
    return f'training {m.group(1)}, at step {_last_step(lines)}'

  def said(self, _, workdir):
    """Each run's train.log (where its resumes are said)."""
    out = []
    for run in self.runs(workdir).values():
      try:
        with open(os.path.join(run, 'train.log')) as f:
          out.append(f.read())
      except OSError:
        pass
    return '\n'.join(out)

  def calibrate(self, attempt: Attempt, workdir: str):
    """When each file of the whole run appeared, in seconds after its ready
    line: a run's results.json and robustness.json, a cell's cost.json."""
    ready = attempt.ready_wall
    self.times = {}
    for path in self._artifacts(workdir):
      self.times[os.path.relpath(path, workdir)] = os.path.getmtime(path) - ready
    end = attempt.first(r'^ablate: wrote ') or attempt.lines[-1][0]
    self.end = end - attempt.ready_at

  @staticmethod
  def _artifacts(workdir):
    cells = os.path.join(workdir, 'cells', '*')
    return (glob.glob(os.path.join(cells, 'seed*', 'results.json')) +
            glob.glob(os.path.join(cells, 'seed*', 'robustness.json')) +
            glob.glob(os.path.join(cells, 'cost.json')))

  def remaining(self, workdir, _):
    """Seconds left: the whole run's end less where the files written so far
    (and the newest checkpoint of a run in training) put this one on it."""
    done = [self.times[os.path.relpath(p, workdir)]
            for p in self._artifacts(workdir)
            if os.path.relpath(p, workdir) in self.times]
    at = max(done, default=0.0)
    # The first run (in the whole run's order) without results: how far its
    # checkpoints got, between the file before it and its results.json.
    runs = sorted((t, name) for name, t in self.times.items()
                  if name.endswith('results.json'))
    for i, (t, name) in enumerate(runs):
      if not os.path.exists(os.path.join(workdir, name)):
        steps = [int(n) for n in _listdir(os.path.join(
            workdir, os.path.dirname(name), 'checkpoints')) if n.isdigit()]
        before = runs[i - 1][0] if i else 0.0
        at = max(at, before + (t - before) * max(steps, default=0) / self.total)
        break
    return max(self.end - at, 0.02 * self.end)


# ------------------------------------------------------------ Comparison ---

def _lines(path):
  """(records, problems) of a metrics.jsonl: every line must be whole JSON."""
  with open(path, 'rb') as f:
    raw = f.read()
  problems = [] if not raw or raw.endswith(b'\n') else [
      f'{path} ends in a half line']
  records = []
  for i, line in enumerate(raw.split(b'\n')[:-1] if raw.endswith(b'\n')
                           else raw.split(b'\n')):
    try:
      records.append(json.loads(line))
    except ValueError:
      problems.append(f'{path} line {i + 1} is not JSON: {line[:80]!r}')
  return records, problems


def compare_metrics(whole_dir, killed_dir, total) -> list[str]:
  """What differs between two runs' metrics.jsonl; [] when identical."""
  whole, problems = _lines(os.path.join(whole_dir, 'metrics.jsonl'))
  killed, more = _lines(os.path.join(killed_dir, 'metrics.jsonl'))
  problems += more
  key = lambda r: (r['split'], r['step'], r.get('member'))
  members = sorted({r.get('member') for r in whole if r['split'] == 'train'},
                   key=str)
  for member in members:
    steps = [r['step'] for r in killed
             if r['split'] == 'train' and r.get('member') == member]
    if steps != list(range(1, total + 1)):
      dup = sorted({s for s in steps if steps.count(s) > 1})
      gone = sorted(set(range(1, total + 1)) - set(steps))
      problems.append(f'train records (member {member}): {len(steps)} for '
                      f'{total} steps; repeated {dup[:10]}, missing {gone[:10]}')
  if killed != whole:
    by_key = {key(r): r for r in whole}
    seen = set()
    for r in killed:
      k = key(r)
      if k in seen:
        problems.append(f'record {k} twice')
      seen.add(k)
      if k not in by_key:
        problems.append(f'record {k} only in the killed run')
      elif by_key[k] != r:
        diff = {f: (by_key[k].get(f), r.get(f)) for f in set(r) | set(by_key[k])
                if by_key[k].get(f) != r.get(f)}
        problems.append(f'record {k} differs: {diff}')
    problems += [f'record {k} missing' for k in by_key if k not in seen]
    if len(problems) == 0:
      problems.append('metrics.jsonl records are in another order')
  return problems[:20]


def compare_params(whole_dir, killed_dir, total):
  """(max |difference|, leaves compared, leaves that differ) of two runs'
  final parameters."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from tests.helpers import final_params  # pylint: disable=g-import-not-at-top
  a = jax.tree_util.tree_flatten_with_path(final_params(whole_dir, total))[0]
  b = dict(jax.tree_util.tree_flatten_with_path(
      final_params(killed_dir, total))[0])
  worst, differ = 0.0, []
  for path, x in a:
    name = jax.tree_util.keystr(path)
    y = b.pop(path, None)
    if y is None or x.shape != y.shape:
      differ.append(f'{name} missing or reshaped')
      continue
    if not np.array_equal(x, y):
      differ.append(name)
    worst = max(worst, float(np.max(np.abs(x.astype(np.float64) - y)))
                if x.size else 0.0)
  differ += [f'{jax.tree_util.keystr(p)} only in the killed run' for p in b]
  return worst, len(a), differ


def _json(path):
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError) as e:
    return f'unreadable ({e})'


def _csv(path):
  with open(path, newline='') as f:
    rows = [{k: v for k, v in r.items() if k not in TIMING_COLUMNS}
            for r in csv.DictReader(f)]
  return sorted(rows, key=lambda r: (r.get('cell'), r.get('seed'),
                                     r.get('member')))


def compare(target, whole, killed) -> tuple[dict, list[str]]:
  """Figures and differences of the killed run against the whole one."""
  figures, problems = {'max_param_diff': 0.0, 'leaves': 0}, []
  runs_whole, runs_killed = target.runs(whole), target.runs(killed)
  if sorted(runs_whole) != sorted(runs_killed):
    problems.append(f'runs differ: {sorted(runs_whole)} vs {sorted(runs_killed)}')
  metrics_ok = results_ok = True
  for name, wdir in runs_whole.items():
    kdir = runs_killed.get(name)
    if kdir is None:
      continue
    worst, leaves, differ = compare_params(wdir, kdir, target.total)
    figures['max_param_diff'] = max(figures['max_param_diff'], worst)
    figures['leaves'] += leaves
    problems += [f'{name}: parameter {d} differs' for d in differ]
    m = compare_metrics(wdir, kdir, target.total)
    metrics_ok &= not m
    problems += [f'{name}: {p}' for p in m]
    a, b = (_json(os.path.join(d, 'results.json')) for d in (wdir, kdir))
    if a != b:
      results_ok = False
      problems.append(f'{name}: results.json differs')
  figures['metrics_equal'] = metrics_ok
  figures['results_json_equal'] = results_ok
  if target.name == 'ablate':
    a, b = (_csv(os.path.join(d, 'results.csv')) for d in (whole, killed))
    figures['csv_rows'] = len(a)
    figures['csv_columns'] = len(a[0]) if a else 0
    figures['csv_equal'] = a == b
    if a != b:
      for ra, rb in zip(a, b):
        cols = [k for k in set(ra) | set(rb) if ra.get(k) != rb.get(k)]
        if cols:
          problems.append(f'results.csv {ra.get("cell")} seed {ra.get("seed")}'
                          f': {sorted(cols)[:8]} differ')
      if len(a) != len(b):
        problems.append(f'results.csv: {len(a)} rows vs {len(b)}')
  return figures, problems


# ------------------------------------------------------------------ Soak ---

def soak(target, workdir: str, kills: int, write_fraction: float,
         rng: random.Random, devices: int = 1, timeout: float = 900,
         alongside: bool = False, say=None) -> tuple[dict, list[str]]:
  """The whole run, then the killed one, then their comparison; with
  `alongside` the whole run starts first and goes on while the first
  attempt starts (the first kill window waits for it)."""
  say = say or (lambda text: print(text, flush=True))
  logs = os.path.join(workdir, 'logs')
  os.makedirs(logs, exist_ok=True)
  whole, killed = (os.path.join(workdir, d) for d in ('whole', 'killed'))
  for d in (whole, killed):
    if os.path.exists(d):
      raise app.UsageError(f'{d} exists: pass a new --workdir.')
  problems = []

  reference = Attempt(target.command(whole), os.path.join(logs, 'whole.log'),
                      target.ready, devices)
  calibrated = []

  def calibrate():
    """Waits for the whole run; its timings size the kill windows."""
    if calibrated:
      return
    rc = reference.finish(timeout)
    if rc or reference.ready_at is None:
      raise RuntimeError(f'the uninterrupted run failed (exit {rc}); see '
                         f'{reference.log_path}:\n{reference.text()[-3000:]}')
    target.calibrate(reference, whole)
    calibrated.append(reference.ended_at - reference.t0)
    say(f'soak: uninterrupted run {calibrated[0]:.1f} s')

  if alongside:  # not before it built the dataset: two builds of one TFDS
    reference.wait_ready(timeout)  # dataset at once trip each other up
  else:
    calibrate()
  say(f'soak: {kills} kills in {killed}')

  aimed = set(rng.sample(range(kills), round(kills * write_fraction)))
  record = {'kills': 0, 'aimed_at_write': 0, 'hit_write': 0, 'attempts': 0,
            'resumed': 0, 'damaged_said': 0, 'half_line_dropped': 0,
            'finished_early': False}
  kill_log, attempts = [], []
  t0 = time.monotonic()
  for i in range(kills + 1):
    attempt = Attempt(target.command(killed),
                      os.path.join(logs, f'killed_{i:02d}.log'), target.ready,
                      devices)
    record['attempts'] += 1
    attempts.append(attempt)
    if i == kills:  # the last one runs to the end
      rc = attempt.finish(timeout)
      if rc:
        problems.append(f'the last attempt failed (exit {rc}); see '
                        f'{attempt.log_path}')
      break
    if not attempt.wait_ready(timeout):
      rc = attempt.finish(timeout)
      if rc == 0 and re.search(DONE, attempt.text()):
        record['finished_early'] = True  # the last kill came after the end
        break
      problems.append(f'attempt {i} ended (exit {rc}) before its first '
                      f'progress line; see {attempt.log_path}')
      break
    before = tmp_entries(target.watched(killed))
    aim = i in aimed
    # The window spreads the kills over what is left of the run.
    calibrate()
    window = 2 * target.remaining(killed, attempt) / (kills - i + 1)
    if aim:  # wait for a write to start, then kill a few ms into it (at the
      # window's end if none starts: an ablation's last phases write none)
      deadline = attempt.ready_at + window
      while (attempt.proc.poll() is None and time.monotonic() < deadline
             and not tmp_entries(target.watched(killed)) - before):
        time.sleep(0.002)
      time.sleep(rng.uniform(0, 0.02))
    else:  # uniformly at random in the window
      delay = rng.uniform(0, window)
      end = attempt.ready_at + delay
      while attempt.proc.poll() is None and time.monotonic() < end:
        time.sleep(0.005)
    if attempt.proc.poll() is not None:  # it finished before the kill
      rc = attempt.finish(timeout)
      record['finished_early'] = True
      if rc:
        problems.append(f'attempt {i} failed (exit {rc}) before its kill; '
                        f'see {attempt.log_path}')
      break
    at = time.monotonic() - attempt.ready_at
    attempt.kill()
    left = tmp_entries(target.watched(killed)) - before
    record['kills'] += 1
    record['aimed_at_write'] += aim
    record['hit_write'] += bool(left)
    half = ', '.join(sorted(os.path.relpath(p, killed) for p, _ in left))
    kill_log.append(
        f'kill {i + 1}: {"aimed at a write, " if aim else ""}{at:.2f} s after '
        f'the ready line, {target.where(attempt, killed)}'
        + (f'; half-written: {half}' if half else ''))
    say(f'soak: {kill_log[-1]}')
  record['killed_s'] = time.monotonic() - t0
  said = target.said(attempts, killed)
  record['resumed'] = len(re.findall(r'Resuming from step', said))
  record['damaged_said'] = len(re.findall(r'Checkpoint step \d+ is damaged',
                                          said))
  record['half_line_dropped'] = len(re.findall(r'a half-written line', said))
  calibrate()
  record['whole_s'] = calibrated[0]
  record['alongside'] = alongside
  record['damaged_moved'] = len(glob.glob(
      os.path.join(killed, '**', 'damaged_checkpoints', '*'), recursive=True))
  record['tmp_left'] = len(tmp_entries(target.watched(killed)))
  record['kill_log'] = kill_log
  if record['kills'] < kills:
    problems.append(f'only {record["kills"]} of {kills} kills landed before '
                    f'the run finished; raise --total_steps')
  if not problems:
    figures, differ = compare(target, whole, killed)
    record.update(figures)
    problems += differ
  return record, problems


def _last_step(lines):
  steps = [int(m.group(1)) for _, line in lines if (m := PROGRESS.search(line))]
  return steps[-1] if steps else '- (none yet)'


# ----------------------------------------------------------------- Report ---

def _machine(load0, load1) -> str:
  nproc = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') \
      else os.cpu_count()
  fmt = lambda l: ', '.join(f'{x:.2f}' for x in l)
  return (f'{report.cpu_name()}, nproc {nproc}; load average (1, 5, 15 min) '
          f'{fmt(load0)} at the start, {fmt(load1)} at the end; '
          f'{report.versions()}')


def markdown(target, record, problems, command, machine, kills) -> str:
  ok = not problems
  rows = [
      ('kills (SIGKILL to the process group)', f'{record["kills"]} of {kills}'),
      ('aimed at a checkpoint write / left a half-written checkpoint',
       f'{record["aimed_at_write"]} / {record["hit_write"]}'),
      ('restarts that said "Resuming from step"' + (
          " (in the runs' train.log)" if target.name == 'ablate' else ''),
       f'{record["resumed"]} of {record["attempts"] - 1}'),
      ('damaged checkpoints moved aside (damaged_checkpoints/)',
       str(record['damaged_moved'])),
      ('restarts that dropped a half-written metrics.jsonl line',
       str(record['half_line_dropped'])),
  ]
  if 'max_param_diff' in record:
    rows += [(f'largest absolute parameter difference ({record["leaves"]} '
              f'leaves, np.array_equal on each)',
              f'{record["max_param_diff"]:g}'),
             ('metrics.jsonl identical (one train record per step, same '
              'values, no half line)', 'yes' if record['metrics_equal'] else 'no'),
             ('results.json identical', 'yes' if record['results_json_equal']
              else 'no')]
  if 'csv_equal' in record:
    rows.append((f'results.csv identical ({record["csv_rows"]} rows x '
                 f'{record["csv_columns"]} columns, run_seconds excluded)',
                 'yes' if record['csv_equal'] else 'no'))
  rows += [('wall time: uninterrupted / killed and restarted' + (
      ' (side by side)' if record.get('alongside') else ''),
            f'{record["whole_s"]:.0f} s / {record["killed_s"]:.0f} s')]
  lines = [f'## `--target={target.name}`: '
           f'{"identical" if ok else "DIFFERS"} '
           f'({datetime.date.today().isoformat()})', '',
           '    ' + command, '', f'Machine: {machine}.', '',
           '| | |', '|---|---|'] + [f'| {a} | {b} |' for a, b in rows]
  lines += ['', '<details><summary>kills</summary>', '']
  lines += [f'- {k}' for k in record['kill_log']] + ['', '</details>']
  if problems:
    lines += ['', 'Differences:', ''] + [f'- {p}' for p in problems]
  return '\n'.join(lines) + '\n'


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  os.environ.setdefault('JAX_PLATFORMS', 'cpu')  # this process only reads
  logging.set_verbosity(logging.ERROR)  # orbax's chatter while reading
  load0 = os.getloadavg()
  is_main = _TARGET.value == 'main'
  kills = _KILLS.value if _KILLS.value is not None else (20 if is_main else 10)
  total = _TOTAL.value or (400 if is_main else 150)
  eval_every = _EVAL.value or max(total // 4, 1)
  workdir = os.path.abspath(cli.WORKDIR.value or tempfile.mkdtemp(prefix='soak_'))
  data_dir = os.path.abspath(_DATA_DIR.value or os.path.join(workdir, 'tfds'))
  seed = _RNG_SEED.value if _RNG_SEED.value is not None else (
      random.SystemRandom().randrange(2**31))
  if is_main:
    target = Main(data_dir, total, _CKPT.value, eval_every)
  else:
    target = Ablate(data_dir, total, _CKPT.value, eval_every, _SEEDS.value,
                    _SWEEP.value)
  command = ' '.join(['python -m benchmarks.soak'] + [
      shlex.quote(a) for a in sys.argv[1:]] + (
          [] if _RNG_SEED.value is not None else [f'--kill_seed={seed}']))
  print(f'soak: {command}\nsoak: workdir {workdir}', flush=True)
  record, problems = soak(target, workdir, kills, _WRITE_FRACTION.value,
                          random.Random(seed), _DEVICES.value, _TIMEOUT.value,
                          _ALONGSIDE.value)
  text = markdown(target, record, problems, command,
                  _machine(load0, os.getloadavg()), kills)
  print(text, flush=True)
  if cli.OUT.value:
    with open(cli.OUT.value, 'a') as f:
      f.write('\n' + text)
  print(f'soak: {"identical" if not problems else "DIFFERS"}; workdirs kept '
        f'in {workdir}', flush=True)
  return 1 if problems else 0


if __name__ == '__main__':
  app.run(main)
