"""The entry point: bad input is one sentence, a non-zero exit, no damage."""

import hashlib
import os
import subprocess
import sys

import pytest

from mmfusion import train
from mmfusion.runtime import malloc
from tests.helpers import tiny_config, subprocess_env

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _main(*flags):
  env = subprocess_env(1)
  return subprocess.run(
      [sys.executable, '-m', 'mmfusion.main',
       '--config=mmfusion/configs/seed.py:runlocal', '--compilation_cache=',
       *flags], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def _snapshot(workdir):
  """Every file under `workdir` with a digest of its bytes."""
  out = {}
  for root, _, files in os.walk(workdir):
    for name in files:
      path = os.path.join(root, name)
      with open(path, 'rb') as f:
        out[os.path.relpath(path, workdir)] = hashlib.sha1(f.read()).hexdigest()
  return out


@pytest.fixture(scope='module')
def finished_workdir(tmp_path_factory, data_dir):
  workdir = str(tmp_path_factory.mktemp('finished'))
  train.train_and_evaluate(tiny_config(data_dir), workdir)
  return workdir


@pytest.mark.parametrize('flag, message', [
    ('--config.model.fusoin=concat', "the config has no key '--config.model.fusoin'"),
    ('--config.model.fusion=nope', "unknown fusion 'nope'; choose one of:"),
    ('--config.data.name=nope/x', "unknown dataset 'nope'; choose one of:"),
    ('--config.model.encoders.image.name=nope',
     "model.encoders.image: unknown encoder 'nope'"),
])
def test_bad_names_fail_in_one_sentence(flag, message, tmp_path):
  result = _main(f'--workdir={tmp_path / "w"}', flag)
  assert result.returncode == 2
  assert result.stderr.startswith(f'mmfusion: error: {message}'), result.stderr
  assert 'Traceback' not in result.stderr and len(result.stderr.splitlines()) == 1
  assert not os.path.exists(tmp_path / 'w')


def test_unwritable_workdir_fails_in_one_sentence(tmp_path):
  blocker = tmp_path / 'file'
  blocker.write_text('not a directory')
  result = _main(f'--workdir={blocker / "w"}')
  assert result.returncode == 2
  assert 'cannot write to workdir' in result.stderr, result.stderr
  assert 'Traceback' not in result.stderr


def test_workdir_of_another_experiment_is_refused_untouched(finished_workdir,
                                                           data_dir):
  before = _snapshot(finished_workdir)
  config = tiny_config(data_dir, **{'model.fusion': 'sum'})
  with pytest.raises(Exception, match='different experiment') as e:
    train.train_and_evaluate(config, finished_workdir)
  assert type(e.value).__name__ == 'UserError'
  assert "model.fusion: 'concat' there, 'sum' now" in str(e.value)
  assert _snapshot(finished_workdir) == before


def test_every_command_line_tool_imports_into_one_process():
  """Flags are process-global: two tools defining one name cannot be imported
  together (a test suite, a notebook), so shared flags live in mmfusion.cli."""
  tools = ['mmfusion.main', 'mmfusion.cost', 'experiments.ablate',
           'benchmarks.run', 'benchmarks.loss_curve', 'benchmarks.whole_runs',
           'benchmarks.op_profile', 'benchmarks.soak', 'benchmarks.manifest_scale',
           'benchmarks.finetune_step',
           'mmfusion.predict', 'mmfusion.export', 'experiments.report.combine',
           'experiments.report.by_feature']
  code = ''.join(f'import {t}\n' for t in tools)
  result = subprocess.run([sys.executable, '-c', code], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stderr[-2000:]


@pytest.mark.parametrize('tool', ['mmfusion.main', 'experiments.ablate'])
def test_help_lists_the_shared_flags(tool):
  result = subprocess.run([sys.executable, '-m', tool, '--help'], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
  for flag in ('--config', '--workdir', '--[no]tune_malloc',
               '--coordinator_address', '--num_processes', '--process_id'):
    assert f'\n  {flag}: ' in result.stdout, (flag, result.stdout[-2000:])


@pytest.mark.parametrize('platforms, plugins, on_cpu', [
    (None, (), True), ('', (), True), ('cpu', ('jax_cuda12_plugin',), True),
    ('CPU,cuda', (), True), ('cuda', (), False), ('tpu,cpu', (), False),
    (None, ('jax_cuda12_plugin',), False),
    (None, ('jax_cuda13_plugin',), False),
    (None, ('libtpu',), False), (None, ('numpy',), True),
])
def test_tune_malloc_is_on_where_jax_runs_on_the_cpu(platforms, plugins,
                                                    on_cpu):
  env = {} if platforms is None else {'JAX_PLATFORMS': platforms}
  find = lambda name: object() if name in plugins else None
  assert malloc.runs_on_cpu(env, find) is on_cpu


def test_a_broken_plugin_lookup_counts_as_no_plugin():
  def find(name):
    raise ModuleNotFoundError(name)
  assert malloc.runs_on_cpu({}, find)
