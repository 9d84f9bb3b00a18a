"""Preemption, a killed run, a damaged checkpoint, divergence, bad batches."""

import json
import os
import random
import resource
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from mmfusion import train
from mmfusion.runtime import errors, reporting
from mmfusion.data import pipeline
from tests.helpers import (ROOT, final_params, main_command, read_metrics,
                           subprocess_env, tiny_config)

STEPS = ('--config.total_steps=150', '--config.checkpoint_every=5',
         '--config.eval_every=1000')


def _start(workdir, data_dir):
  return subprocess.Popen(main_command(workdir, data_dir, *STEPS), cwd=ROOT,
                          env=subprocess_env(), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)


def _wait_for_step(workdir, step, proc, timeout=120):
  """Blocks until metrics.jsonl shows `step` (the child is mid-training)."""
  path = os.path.join(workdir, 'metrics.jsonl')
  deadline = time.time() + timeout
  while time.time() < deadline and proc.poll() is None:
    if os.path.exists(path) and any(
        r['step'] >= step for r in read_metrics(workdir)):
      return
    time.sleep(0.05)
  raise AssertionError(f'child never reached step {step}: {proc.communicate()}')


@pytest.fixture(scope='module')
def uninterrupted(tmp_path_factory, data_dir):
  workdir = str(tmp_path_factory.mktemp('whole'))
  subprocess.run(main_command(workdir, data_dir, *STEPS), cwd=ROOT, check=True,
                 env=subprocess_env(), capture_output=True, timeout=300)
  return final_params(workdir, 150)


def _limit_file_size(limit: int, argv):
  """`argv` run so that every write past `limit` bytes of a file fails
  (EFBIG), as a full disk would fail it; no privilege needed."""
  code = ('import os, resource, sys; resource.setrlimit(resource.RLIMIT_FSIZE'
          f', ({limit}, {limit})); os.execv(sys.argv[1], sys.argv[1:])')
  return [sys.executable, '-c', code, *argv]


@pytest.mark.slow  # kill, fail and resume chains, as benchmarks/soak.py
def test_sigterm_then_a_failed_checkpoint_write_then_resume_ends_identical(
    tmp_path, data_dir, uninterrupted):
  workdir = str(tmp_path / 'run')
  proc = _start(workdir, data_dir)
  _wait_for_step(workdir, 30, proc)
  proc.send_signal(signal.SIGTERM)
  out, _ = proc.communicate(timeout=120)
  assert proc.returncode == 0, out
  assert 'Preempted (SIGTERM) at step' in out and 'Traceback' not in out
  stopped = int(out.split('Preempted (SIGTERM) at step ')[1].split(':')[0])
  assert stopped < 150
  assert os.path.isdir(os.path.join(workdir, 'checkpoints', str(stopped)))
  # The next checkpoint's largest file (~48 KB) cannot be written; the logs
  # (< 20 KB by then) can.
  full = subprocess.run(
      _limit_file_size(30_000, main_command(workdir, data_dir, *STEPS)),
      cwd=ROOT, env=subprocess_env(), capture_output=True, text=True,
      timeout=300)
  assert full.returncode == 2, full.stderr
  assert 'Traceback' not in full.stdout + full.stderr, full.stderr
  message, = full.stderr.strip().splitlines()
  assert (f'cannot write checkpoint step {stopped // 5 * 5 + 5} to {workdir}'
          in message)
  assert 'File too large' in message and 'MiB free' in message
  assert f'resume from step {stopped},' in message
  _assert_whole_lines(os.path.join(workdir, 'metrics.jsonl'))
  again = subprocess.run(main_command(workdir, data_dir, *STEPS), cwd=ROOT,
                         env=subprocess_env(), capture_output=True, text=True,
                         timeout=300)
  assert f'Resuming from step {stopped}' in again.stdout, again.stderr
  jax.tree.map(np.testing.assert_array_equal, uninterrupted,
               final_params(workdir, 150))
  steps = [r['step'] for r in read_metrics(workdir)]
  assert steps == list(range(1, 151))  # each step logged once


def _assert_whole_lines(path):
  with open(path, 'rb') as f:
    data = f.read()
  assert data.endswith(b'\n')
  for line in data.splitlines():
    json.loads(line)


@pytest.mark.slow  # a run signalled mid-step in a child process
def test_a_signal_is_answered_after_the_step_it_arrives_in(tmp_path,
                                                           data_dir):
  """A slower step (a 2048-wide head) and a log interval longer than the
  run: the save still starts right after the step the signal hit (a loop
  that only looked at log or checkpoint steps would never stop)."""
  workdir = str(tmp_path / 'run')
  proc = subprocess.Popen(
      main_command(workdir, data_dir, '--config.total_steps=100000',
                   '--config.log_every=100000', '--config.eval_every=100000',
                   '--config.checkpoint_every=100000',
                   '--config.model.head_hidden=(2048, 2048)'),
      cwd=ROOT, env=subprocess_env(), stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT, text=True)
  for line in proc.stdout:
    if line.startswith('Training from step 0'):
      break
  time.sleep(3)  # compiled and stepping
  sent = time.perf_counter()
  proc.send_signal(signal.SIGINT)
  out, _ = proc.communicate(timeout=60)
  elapsed = time.perf_counter() - sent
  assert proc.returncode == 0, out
  assert 'Preempted (SIGINT) at step' in out, out
  stopped = int(out.split('at step ')[1].split(':')[0])
  assert os.path.isdir(os.path.join(workdir, 'checkpoints', str(stopped)))
  assert elapsed < 20, f'{elapsed:.1f} s from SIGINT to exit'
  print(f'SIGINT to exit: {elapsed:.2f} s, saved step {stopped}')


@pytest.mark.slow  # kill, fail and resume chains, as benchmarks/soak.py
def test_sigkill_at_a_random_step_then_rerun_ends_identical(tmp_path, data_dir,
                                                            uninterrupted):
  workdir = str(tmp_path / 'run')
  proc = _start(workdir, data_dir)
  _wait_for_step(workdir, random.Random().randint(12, 120), proc)
  proc.kill()
  proc.communicate()
  again = subprocess.run(main_command(workdir, data_dir, *STEPS), cwd=ROOT,
                         env=subprocess_env(), capture_output=True, text=True,
                         timeout=300)
  assert again.returncode == 0, again.stderr
  assert 'Resuming from step' in again.stdout
  jax.tree.map(np.testing.assert_array_equal, uninterrupted,
               final_params(workdir, 150))


def test_damaged_latest_checkpoint_falls_back_and_says_so(tmp_path, data_dir,
                                                          capsys):
  workdir = str(tmp_path / 'run')
  config = tiny_config(data_dir)
  train.train_and_evaluate(config, workdir)
  state_dir = os.path.join(workdir, 'checkpoints', '12', 'state')
  for root, _, files in os.walk(state_dir):  # truncate every file
    for name in files:
      open(os.path.join(root, name), 'w').close()
  config.total_steps = 16
  summary = train.train_and_evaluate(config, workdir)
  out = capsys.readouterr().out
  assert ('Checkpoint step 12 is damaged (state/_METADATA is empty '
          '(truncated);') in out
  assert '<' not in out.split('is damaged')[1].split('moved')[0]  # no reprs
  assert 'Resuming from step 8' in out
  assert summary['step'] == 16
  assert os.path.isdir(os.path.join(workdir, 'damaged_checkpoints', '12'))


def test_divergence_stops_naming_the_step_and_keeps_good_checkpoints(
    tmp_path, data_dir):
  workdir = str(tmp_path / 'run')
  config = tiny_config(data_dir, **{'optimizer.learning_rate': 1e30,
                                    'optimizer.warmup_steps': 0,
                                    'log_every': 4})
  with pytest.raises(errors.UserError, match=r'training diverged at step \d+: '
                     r'.*not finite.*encoder_') as e:
    train.train_and_evaluate(config, workdir)
  bad = int(str(e.value).split('at step ')[1].split(':')[0])
  logged = [r['step'] for r in read_metrics(workdir)]
  assert logged == list(range(1, bad))  # every good step logged, then stop
  steps = os.listdir(os.path.join(workdir, 'checkpoints'))
  assert all(int(s) < bad for s in steps if s.isdigit())


@pytest.mark.parametrize('change, message', [
    (lambda b: {**b, 'image': b['image'][:, :50]}, "batch 'image' is float32"),
    (lambda b: {**b, 'label': b['label'].astype(np.float32)}, "batch 'label'"),
    (lambda b: {**b, 'audio': b['image']}, "the batch has ['audio']"),
    (lambda b: {k: v for k, v in b.items() if k != 'text'}, "no 'text'"),
])
def test_bad_batches_fail_before_the_first_step(data_dir, change, message):
  config = tiny_config(data_dir)
  builder = pipeline.get_builder(config.data)
  spec = pipeline.batch_spec(builder, config.data.modalities, 16)
  good = {k: np.zeros(shape, dtype) for k, (shape, dtype) in spec.items()}
  pipeline.check_batch(good, spec)
  with pytest.raises(errors.UserError, match=message.replace('[', r'\[').replace(']', r'\]')):
    pipeline.check_batch(change(good), spec)


def _damage_every_file(directory):
  for root, _, names in os.walk(directory):
    for name in names:
      open(os.path.join(root, name), 'w').close()


def test_every_checkpoint_damaged_stops_unless_told_to_start_over(
    tmp_path, data_dir, capfd):
  workdir = str(tmp_path / 'run')
  config = tiny_config(data_dir)
  train.train_and_evaluate(config, workdir)
  _damage_every_file(os.path.join(workdir, 'checkpoints'))
  capfd.readouterr()
  with pytest.raises(errors.UserError, match=r'every checkpoint in .* is '
                     r'damaged \(steps 4, 8, 12, moved to .*'
                     r'damaged_checkpoints\); pass --start_over') as e:
    train.train_and_evaluate(config, workdir)
  assert '\n' not in str(e.value)
  out, err = capfd.readouterr()
  assert 'Checkpoint step 12 is damaged (_CHECKPOINT_METADATA is empty' in out
  assert 'Traceback' not in out + err and 'Event loop' not in out + err
  assert 'Failed to json parse' not in err  # orbax's own log lines
  summary = train.train_and_evaluate(config, workdir, start_over=True)
  assert summary['step'] == 12
  assert 'Resuming' not in capfd.readouterr().out


def test_a_finished_run_rerun_adds_nothing_and_says_where_its_results_are(
    tmp_path, data_dir, capsys):
  workdir = str(tmp_path / 'run')
  config = tiny_config(data_dir)
  first = train.train_and_evaluate(config, workdir)
  before = {name: open(os.path.join(root, name), 'rb').read()
            for root, _, names in os.walk(workdir) for name in names}
  capsys.readouterr()
  again = train.train_and_evaluate(config, workdir)
  assert 'is already complete at step 12' in capsys.readouterr().out
  after = {name: open(os.path.join(root, name), 'rb').read()
           for root, _, names in os.walk(workdir) for name in names}
  assert after == before  # no new metrics line, TensorBoard file or step
  assert again['test'] == first['test'] and again['already_complete']


def test_resume_refuses_a_changed_experiment_unless_allowed_and_records_it(
    tmp_path, data_dir):
  workdir = str(tmp_path / 'run')
  train.train_and_evaluate(tiny_config(data_dir, total_steps=8), workdir)
  longer = tiny_config(data_dir, total_steps=12)  # may change
  longer.optimizer.learning_rate = 1e-2
  with pytest.raises(errors.UserError, match=r'optimizer.learning_rate: 0.003 '
                     r'there, 0.01 now.*--allow_changed=optimizer.learning_rate'):
    train.train_and_evaluate(longer, workdir)
  longer.batch_size = 32
  summary = train.train_and_evaluate(
      longer, workdir, allow_changed=('optimizer.learning_rate', 'batch_size'))
  assert summary['step'] == 12
  with open(os.path.join(workdir, 'resume_changes.jsonl')) as f:
    changes = [json.loads(line) for line in f]
  assert changes == [
      {'step': 8, 'key': 'batch_size', 'before': 16, 'now': 32},
      {'step': 8, 'key': 'optimizer.learning_rate', 'before': 0.003,
       'now': 0.01}]
  with pytest.raises(errors.UserError, match='--allow_changed=model.fusion: '
                     'this key cannot change on resume'):
    train.train_and_evaluate(longer, workdir, allow_changed=('model.fusion',))


def test_metrics_keep_whole_lines_when_a_write_fails(tmp_path):
  path = tmp_path / 'metrics.jsonl'
  writer = reporting.MetricWriter(str(tmp_path))
  writer.write(1, 'train', {'loss': 1.0})
  size = path.stat().st_size
  soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
  resource.setrlimit(resource.RLIMIT_FSIZE, (size + 10, hard))
  try:  # the next line only half fits
    with pytest.raises(errors.UserError, match=f'cannot write {path} '
                       r'\(File too large'):
      writer.write(2, 'train', {'loss': 0.5, 'accuracy': 0.25})
  finally:
    resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
  assert path.read_text() == '{"step": 1, "split": "train", "loss": 1.0}\n'


def test_a_resume_drops_a_half_line_and_what_comes_after_its_step(
    tmp_path, capsys):
  path = tmp_path / 'metrics.jsonl'
  lines = [json.dumps({'step': s, 'split': 'train', 'loss': 1.0 / s})
           for s in range(1, 8)]
  path.write_text('\n'.join(lines) + '\n{"step": 8, "spl')  # killed mid-line
  reporting.MetricWriter(str(tmp_path), resume_step=5, final_step=20).close()
  assert path.read_text() == '\n'.join(lines[:5]) + '\n'
  assert ('dropped 2 records after step 5 (logged again now) and a '
          'half-written line') in capsys.readouterr().out
