"""Two processes (2 fake devices each) train like one process with 4 devices;
multi-host flags that cannot work fail in one sentence, in every tool."""

import os
import re
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from mmfusion import sharding
from mmfusion.runtime import errors
from tests.helpers import ROOT, final_params, main_command, subprocess_env


def _free_port():
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def test_two_processes_match_one_and_their_checkpoint_restores(tmp_path):
  steps = ('--config.total_steps=8', '--config.checkpoint_every=4',
           '--config.eval_every=4')
  data_dir = str(tmp_path / 'data')  # the first run builds it
  one = str(tmp_path / 'one')
  with open(tmp_path / 'one.log', 'w') as log:  # output to a file, no TTY
    subprocess.run(main_command(one, data_dir, *steps), cwd=ROOT, check=True,
                   env=subprocess_env(4), stdout=log, stderr=subprocess.STDOUT,
                   timeout=300)
  log = (tmp_path / 'one.log').read_text()
  assert 'Building synthetic_interactions/' in log and '... built (384 ' in log
  assert f'Results: {one}/results.json' in log
  for noise in ('\r', '\x1b', 'Downloading', 'downloaded and prepared'):
    assert noise not in log, (noise, log)
  two = str(tmp_path / 'two')
  address = f'127.0.0.1:{_free_port()}'
  procs = [subprocess.Popen(
      main_command(two, data_dir, *steps, f'--coordinator_address={address}',
                   '--num_processes=2', f'--process_id={i}'),
      cwd=ROOT, env=subprocess_env(2), stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT, text=True) for i in range(2)]
  outputs = [p.communicate(timeout=300)[0] for p in procs]
  assert [p.returncode for p in procs] == [0, 0], outputs
  assert '| test |' in outputs[0] and '| test |' not in outputs[1]
  assert 'Results: ' in outputs[0] and 'Results: ' not in outputs[1]
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6),
               final_params(one), final_params(two))
  # A single process with 4 devices picks up the 2-process run's checkpoint.
  resumed = subprocess.run(
      main_command(two, data_dir, *steps[1:], '--config.total_steps=10'),
      cwd=ROOT, env=subprocess_env(4), capture_output=True, text=True,
      timeout=300)
  assert resumed.returncode == 0, resumed.stderr
  assert 'Resuming from step 8' in resumed.stdout
  assert '| test |' in resumed.stdout
  assert os.path.isdir(os.path.join(two, 'checkpoints', '10'))


@pytest.mark.parametrize('address, processes, process_id, message', [
    ('', 2, 0, '--num_processes=2 needs --coordinator_address=HOST:PORT'),
    ('127.0.0.1:1', 2, 2, '--process_id=2 is not in 0 .. 1'),
    ('', 1, 1, '--process_id=1 is not in 0 .. 0'),
    ('', 0, 0, '--num_processes=0: pass 1 or more'),
])
def test_multihost_flags_that_cannot_work_are_one_sentence(
    address, processes, process_id, message):
  with pytest.raises(errors.UserError, match=re.escape(message)) as e:
    sharding.initialize_distributed(address, processes, process_id)
  assert '\n' not in str(e.value) and str(e.value).endswith('.')


def test_ablate_starts_multihost_runs_like_main(tmp_path):
  result = subprocess.run(
      [sys.executable, '-m', 'experiments.ablate', '--num_processes=2',
       f'--workdir={tmp_path / "w"}', '--compilation_cache=',
       '--config=mmfusion/configs/seed.py:runlocal'], cwd=ROOT,
      env=subprocess_env(1), capture_output=True, text=True, timeout=120)
  assert result.returncode == 2
  assert result.stderr == ('mmfusion: error: --num_processes=2 needs '
                           '--coordinator_address=HOST:PORT of process 0, the '
                           'same on every process.\n'), result.stderr
  assert not (tmp_path / 'w').exists()
