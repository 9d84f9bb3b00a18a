"""Preemption, a killed run, a damaged checkpoint, divergence, bad batches."""

import os
import random
import signal
import subprocess
import time

import jax
import numpy as np
import pytest

from mmfusion import train
from mmfusion.runtime import errors
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


def test_sigterm_saves_and_exits_cleanly_then_resumes(tmp_path, data_dir,
                                                      uninterrupted):
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
  again = subprocess.run(main_command(workdir, data_dir, *STEPS), cwd=ROOT,
                         env=subprocess_env(), capture_output=True, text=True,
                         timeout=300)
  assert f'Resuming from step {stopped}' in again.stdout, again.stderr
  jax.tree.map(np.testing.assert_array_equal, uninterrupted,
               final_params(workdir, 150))


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
  assert 'Checkpoint step 12 is damaged' in out
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
