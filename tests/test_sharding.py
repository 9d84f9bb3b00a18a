"""Data parallel and FSDP give the loss curve of one device; accumulation too."""

import jax
import numpy as np
import pytest

from mmfusion import sharding, train
from tests.helpers import read_metrics, tiny_config


def test_fsdp_spec_splits_big_arrays_on_a_divisible_axis():
  assert sharding.fsdp_spec((100, 64), 8, min_size=1000) == jax.sharding.PartitionSpec(None, 'data')
  assert sharding.fsdp_spec((64, 100), 8, min_size=1000) == jax.sharding.PartitionSpec('data')
  assert sharding.fsdp_spec((10,), 8, min_size=1) == jax.sharding.PartitionSpec()
  assert sharding.fsdp_spec((100, 64), 8, min_size=10**6) == jax.sharding.PartitionSpec()


def _losses(tmp_path, data_dir, name, **overrides):
  config = tiny_config(data_dir, total_steps=20, eval_every=100,
                       checkpoint_every=100, batch_size=32, **overrides)
  train.train_and_evaluate(config, str(tmp_path / name))
  return [r['loss'] for r in read_metrics(str(tmp_path / name))]


@pytest.mark.parametrize('fsdp', [False, True])
def test_one_and_eight_devices_give_the_same_loss_curve(tmp_path, data_dir, fsdp):
  one = _losses(tmp_path, data_dir, 'one', num_devices=1)
  eight = _losses(tmp_path, data_dir, 'eight', num_devices=8, fsdp=fsdp,
                  fsdp_min_size=256)
  assert len(one) == 20
  np.testing.assert_allclose(one, eight, rtol=0, atol=1e-5)
  assert one[-1] < one[0]


def test_fsdp_state_is_really_split(data_dir):
  config = tiny_config(data_dir)
  mesh = sharding.make_mesh(8)
  abstract = {'w': jax.ShapeDtypeStruct((100, 64), np.float32),
              'b': jax.ShapeDtypeStruct((64,), np.float32)}
  specs = sharding.state_shardings(abstract, mesh, fsdp=True, fsdp_min_size=256)
  assert specs['w'].spec == jax.sharding.PartitionSpec(None, 'data')
  assert specs['b'].spec == jax.sharding.PartitionSpec()
  del config


def test_gradient_accumulation_matches_one_big_batch(tmp_path, data_dir):
  whole = _losses(tmp_path, data_dir, 'whole')
  accumulated = _losses(tmp_path, data_dir, 'accum', grad_accum_steps=4)
  np.testing.assert_allclose(whole, accumulated, rtol=0, atol=1e-5)


def test_remat_changes_memory_not_the_loss_curve(tmp_path, data_dir):
  plain = _losses(tmp_path, data_dir, 'plain')
  remat = _losses(tmp_path, data_dir, 'remat', **{'model.remat': True})
  np.testing.assert_allclose(plain, remat, rtol=0, atol=1e-5)
