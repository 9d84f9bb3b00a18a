"""Two processes (2 fake devices each) train like one process with 4 devices."""

import os
import socket
import subprocess

import jax
import numpy as np

from tests.helpers import ROOT, final_params, main_command, subprocess_env


def _free_port():
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def test_two_processes_match_one_and_their_checkpoint_restores(tmp_path, data_dir):
  steps = ('--config.total_steps=8', '--config.checkpoint_every=4',
           '--config.eval_every=4')
  one = str(tmp_path / 'one')
  subprocess.run(main_command(one, data_dir, *steps), cwd=ROOT, check=True,
                 env=subprocess_env(4), capture_output=True, timeout=300)
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
