"""The cost report: parameter counts by hand, FLOPs near the hand count, CLI."""

import json
import os
import subprocess
import sys

import pytest

from mmfusion.configs import seed as seed_config
from mmfusion import cost
from tests.helpers import subprocess_env

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
B = 8


@pytest.fixture(scope='module')
def seed_report(tmp_path_factory):
  data_dir = tmp_path_factory.mktemp('no_data')
  config = seed_config.get_config()
  config.data.data_dir = str(data_dir)
  r = cost.report(config, batch_size=B)
  r['data_files'] = [f for _, _, fs in os.walk(data_dir) for f in fs]
  return r


def test_parameters_per_part_are_the_hand_count(seed_report):
  params = seed_report['params']
  assert params == {
      'encoder_image': 100 * 64 + 64,
      'encoder_text': 50 * 64 + 64,
      'fusion': 2 * 64,  # concat's learned stand-ins for a missing modality
      'head': 128 * 10 + 10,
      'total': params['total']}
  assert sum(v for k, v in params.items() if k != 'total') == params['total']


def test_flops_are_near_the_hand_count(seed_report):
  matmuls = 2 * B * (100 * 64 + 50 * 64 + 128 * 10)
  forward = seed_report['forward']['flops']
  assert 0.8 * matmuls < forward < 1.5 * matmuls
  # Backward is about twice the forward, plus the AdamW update.
  assert seed_report['train_step']['flops'] > 2 * forward


def test_report_is_plain_json_and_reads_no_data(seed_report):
  assert json.loads(json.dumps(seed_report)) == seed_report
  assert seed_report['data_files'] == []  # shapes from the feature spec only
  for part in ('forward', 'train_step'):
    assert seed_report[part]['peak_bytes'] > 0
    assert seed_report[part]['compile_s'] > 0
  assert (seed_report['train_step']['peak_bytes'] >
          seed_report['forward']['peak_bytes'])


def test_train_step_is_the_loops(seed_report, tmp_path):
  """K vmapped runs cost K steps; accumulation keeps the FLOPs of one pass."""
  config = seed_config.get_config()
  config.data.data_dir = str(tmp_path)
  config.vmap.size = 2
  config.grad_accum_steps = 2
  r = cost.report(config, batch_size=B)
  assert r['members'] == 2 and r['params'] == seed_report['params']
  ratio = r['train_step']['flops'] / seed_report['train_step']['flops']
  assert 1.9 < ratio < 2.1, ratio


def _cost(*flags):
  env = subprocess_env(1)
  return subprocess.run(
      [sys.executable, '-m', 'mmfusion.cost',
       '--config=mmfusion/configs/seed.py:runlocal', '--config.batch_size=8',
       *flags], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def test_command_prints_a_table():
  result = _cost('--config.model.fusion=sum')
  assert result.returncode == 0, result.stderr
  assert 'sum (intermediate) on synthetic_interactions/redundancy' in result.stdout
  assert '| encoder_image | 6,464 |' in result.stdout
  assert '| fusion | 8,320 |' in result.stdout  # 2 x Dense(64 -> 64)
  for row in ('| forward |', '| train_step |'):
    assert row in result.stdout


def test_command_fails_on_a_bad_name_in_one_sentence():
  result = _cost('--config.model.fusion=nope')
  assert result.returncode == 2
  assert result.stderr.startswith("mmfusion: error: unknown fusion 'nope'")
  assert 'Traceback' not in result.stderr and len(result.stderr.splitlines()) == 1


def test_a_contrastive_run_is_costed_with_its_task():
  config = seed_config.get_config('runlocal,task=contrastive')
  report = cost.report(config, batch_size=B)
  assert report['task'] == 'contrastive' and report['metric'] == 'recall@1'
  assert report['higher_is_better'] and report['chance'] is None
  assert report['kernels'] in ('flax', 'xla_cpu')
  assert report['train_step']['flops'] > report['forward']['flops'] > 0
