"""Two processes (2 fake devices each) train like one process with 4 devices
(on the contrastive task, whose negatives span processes);
multi-host flags that cannot work fail in one sentence, in every tool."""

import functools
import os
import re
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from mmfusion.runtime import distributed
from mmfusion.runtime import errors
from tests import helpers
from tests.helpers import ROOT, final_params, subprocess_env

pytestmark = pytest.mark.slow  # several coordinated processes per test


def _free_port():
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


# The contrastive task: its loss gathers the global batch's embeddings over
# the data axis, across processes too, so 2 x 2 devices equal 1 x 4 only if
# every process sees every negative (classification's loss is a mean over
# the batch, which test_sharding checks over 8 devices in one process).
CONTRASTIVE = 'mmfusion/configs/seed.py:uniqueness_image,runlocal,task=contrastive'


def test_two_processes_match_one_and_their_checkpoint_restores(tmp_path):
  steps = ('--config.total_steps=8', '--config.checkpoint_every=4',
           '--config.eval_every=4')
  main_command = functools.partial(helpers.main_command, config=CONTRASTIVE)
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
  assert 'recall@1' in outputs[0]
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
    distributed.initialize(address, processes, process_id)
  assert '\n' not in str(e.value) and str(e.value).endswith('.')


@pytest.mark.parametrize('address, message', [
    ('127.0.0.1', '--coordinator_address=127.0.0.1 is not HOST:PORT'),
    ('127.0.0.1:0', 'is not HOST:PORT with a port in 1 .. 65535'),
    ('127.0.0.1:65536', 'is not HOST:PORT with a port in 1 .. 65535'),
    ('127.0.0.1:http', 'is not HOST:PORT'),
    (':1234', '--coordinator_address=:1234 is not HOST:PORT'),
    ('::1:1234', 'an IPv6 host in brackets, [::1]:1234'),
    ('nohost.invalid:1234', "host 'nohost.invalid' does not resolve"),
])
def test_coordinator_addresses_that_cannot_work_are_one_sentence(address,
                                                                 message):
  with pytest.raises(errors.UserError, match=re.escape(message)) as e:
    distributed.initialize(address, 2, 1)
  assert '\n' not in str(e.value) and str(e.value).endswith('.')


@pytest.mark.parametrize('address', ['localhost:1234', '127.0.0.1:65535',
                                     '[::1]:1234'])
def test_coordinator_addresses_that_can_work_pass_the_checks(address):
  distributed._check_processes(address, 2, 1)  # pylint: disable=protected-access


@pytest.mark.parametrize('timeout', [0, -5])
def test_distributed_timeout_that_cannot_work_is_one_sentence(timeout):
  with pytest.raises(errors.UserError, match=re.escape(
      f'--distributed_timeout={timeout}: pass a positive number')) as e:
    distributed.initialize('127.0.0.1:1234', 2, 0, timeout=timeout)
  assert '\n' not in str(e.value) and str(e.value).endswith('.')


def _lone_process(tmp_path, address, process_id, timeout=5):
  """A `mmfusion.main` process of a 2-process run whose peer never starts."""
  command = [sys.executable, '-m', 'mmfusion.main', '--compilation_cache=',
             '--config=mmfusion/configs/seed.py:runlocal',
             f'--workdir={tmp_path / "w"}', '--num_processes=2',
             f'--process_id={process_id}', f'--coordinator_address={address}',
             f'--distributed_timeout={timeout}']
  start = time.monotonic()
  result = subprocess.run(command, cwd=ROOT, env=subprocess_env(1),
                          capture_output=True, text=True, timeout=timeout + 30)
  elapsed = time.monotonic() - start
  assert result.returncode == 2, result.stderr
  errors_ = [l for l in result.stderr.splitlines()
             if l.startswith('mmfusion: error:')]
  assert len(errors_) == 1, result.stderr
  for noise in ('Traceback', 'Check failure', 'Terminating process'):
    assert noise not in result.stderr, result.stderr
  assert not (tmp_path / 'w').exists()
  return errors_[0], result.stderr, elapsed


@pytest.mark.parametrize('process_id, message', [
    (0, 'only 1 of 2 processes connected to {} within 5 s'),
    (1, 'could not reach the coordinator at {} within 5 s'),
])
def test_a_process_without_its_peers_gives_up_in_one_sentence(
    tmp_path, process_id, message):
  address = f'127.0.0.1:{_free_port()}'
  error, stderr, elapsed = _lone_process(tmp_path, address, process_id)
  assert message.format(address) in error and error.endswith('.'), stderr
  assert '--distributed_timeout' in error, error
  assert (f'mmfusion: waiting up to 5 s for 2 processes at {address} (this '
          f'is process {process_id}) ...') in stderr.splitlines(), stderr
  assert 5 <= elapsed < 35, elapsed


def test_a_coordinator_port_in_use_is_one_sentence(tmp_path):
  with socket.socket() as taken:
    taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    taken.bind(('0.0.0.0', 0))
    taken.listen()
    address = f'127.0.0.1:{taken.getsockname()[1]}'
    error, stderr, elapsed = _lone_process(tmp_path, address, 0, timeout=60)
  port = address.split(':')[1]
  assert error == (f'mmfusion: error: process 0 cannot serve the coordinator '
                   f'at {address} (port {port}: Address already in use; '
                   f'another program may hold it); pass a port that is '
                   f"free on process 0's machine."), stderr
  assert elapsed < 30, elapsed  # failed at once, and jax's atexit did not wait


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

