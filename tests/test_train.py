"""End to end: train, checkpoint, resume, and the same run on 1 or 8 devices."""

import json
import os
import shutil

import jax
import numpy as np

from mmfusion import train
from tests.helpers import final_params, read_metrics, tiny_config


def test_run_writes_its_workdir(tmp_path, data_dir):
  workdir = str(tmp_path / 'run')
  summary = train.train_and_evaluate(tiny_config(data_dir), workdir)
  assert sorted(os.listdir(workdir)) == [
      'best', 'checkpoints', 'data_info.json', 'metrics.jsonl',
      'results.json', 'tensorboard']
  assert os.listdir(os.path.join(workdir, 'tensorboard'))
  with open(os.path.join(workdir, 'results.json')) as f:
    results = json.load(f)
  assert results['step'] == 12 and results['test']['examples'] == 64
  for subset in ('image', 'text'):  # scored with only some modalities present
    assert 0 <= results['test'][f'accuracy/{subset}'] <= 1
  assert results['best']['metric'] == 'accuracy'
  # image 100 -> 64, text 50 -> 64, concat 128 -> 10: the seed model, plus
  # concat's learned stand-ins for a missing modality (64 each).
  assert results['num_params'] == (
      (100 * 64 + 64) + (50 * 64 + 64) + (128 * 10 + 10) + 2 * 64)
  assert summary['test'] == results['test']
  assert [r['step'] for r in read_metrics(workdir)] == list(range(1, 13))
  assert {r['split'] for r in read_metrics(workdir, 'validation')} == {'validation'}
  steps = os.listdir(os.path.join(workdir, 'checkpoints'))
  assert sorted(int(s) for s in steps if s.isdigit()) == [4, 8, 12]


def test_resumed_run_ends_with_the_uninterrupted_parameters(tmp_path, data_dir):
  config = tiny_config(data_dir)
  whole, broken = str(tmp_path / 'whole'), str(tmp_path / 'broken')
  train.train_and_evaluate(config, whole)
  train.train_and_evaluate(config, broken)
  for step in ('8', '12'):  # as if the run had died just after step 4's save
    shutil.rmtree(os.path.join(broken, 'checkpoints', step))
  train.train_and_evaluate(config, broken)
  expected, got = final_params(whole, 12), final_params(broken, 12)
  jax.tree.map(np.testing.assert_array_equal, expected, got)
  resumed = read_metrics(broken)[-8:]  # steps 5..12 of the second attempt
  assert [r['step'] for r in resumed] == list(range(5, 13))
  assert [r['loss'] for r in resumed] == [r['loss'] for r in read_metrics(whole)[4:]]


def test_rerunning_a_finished_run_does_not_train_again(tmp_path, data_dir):
  workdir = str(tmp_path / 'run')
  config = tiny_config(data_dir)
  first = train.train_and_evaluate(config, workdir)
  second = train.train_and_evaluate(config, workdir)
  assert second['test'] == first['test']
  assert len(read_metrics(workdir)) == 12


def test_one_and_eight_devices_give_the_same_losses(tmp_path, data_dir):
  losses = {}
  for n in (1, 8):
    config = tiny_config(data_dir, num_devices=n, batch_size=32)
    train.train_and_evaluate(config, str(tmp_path / f'd{n}'))
    losses[n] = [r['loss'] for r in read_metrics(str(tmp_path / f'd{n}'))]
  np.testing.assert_allclose(losses[1], losses[8], rtol=0, atol=1e-5)
  assert losses[1][-1] < losses[1][0]  # and it learns
