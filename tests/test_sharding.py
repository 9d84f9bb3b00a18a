"""Data parallel and FSDP give the loss curve of one device; accumulation too."""

import jax
import numpy as np
import pytest

from mmfusion import build, sharding, train
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
  """The train state a run builds: big parameters and their Adam moments
  live in eighths on the 8 devices, small ones whole on each."""
  config = tiny_config(data_dir, fsdp=True, fsdp_min_size=256, num_devices=8)
  state = build.run(config).init_state()
  kernel = state.params['encoder_image']['Dense_0']['kernel']  # [100, 64]
  bias = state.params['encoder_image']['Dense_0']['bias']  # [64]
  # 100 rows do not split in 8: the 64 columns do.
  assert kernel.sharding.spec == jax.sharding.PartitionSpec(None, 'data')
  assert len(kernel.addressable_shards) == 8
  assert {s.data.shape for s in kernel.addressable_shards} == {(100, 8)}
  assert bias.sharding.spec == jax.sharding.PartitionSpec()
  assert {s.data.shape for s in bias.addressable_shards} == {(64,)}
  mu = state.opt_state[0].mu['encoder_image']['Dense_0']['kernel']
  assert mu.sharding == kernel.sharding


def test_gradient_accumulation_matches_one_big_batch(tmp_path, data_dir):
  whole = _losses(tmp_path, data_dir, 'whole')
  accumulated = _losses(tmp_path, data_dir, 'accum', grad_accum_steps=4)
  np.testing.assert_allclose(whole, accumulated, rtol=0, atol=1e-5)


def _remat_calls(config) -> int:
  """Checkpointed (remat) calls in the traced train step of `config`."""
  run = build.run(config)
  step = lambda st, b: train.train_step(st, b, model=run.model, task=run.task,
                                          tx=run.tx)
  jaxpr = jax.make_jaxpr(step)(run.abstract_state(), run.abstract_batch(16))
  return sum(e.primitive.name.startswith(('remat', 'checkpoint'))
             for e in jaxpr.jaxpr.eqns)


def test_remat_recomputes_and_keeps_the_loss_curve(tmp_path, data_dir):
  """With model.remat each encoder's forward is a checkpointed call that
  the backward pass recomputes, and the run trains exactly as without it.

  Its memory saving does not show on XLA:CPU, whose reported temporary
  memory does not drop even for jax.checkpoint of a plain stack of layers
  (README, "Scale and reliability"); so the traced step is what is checked.
  """
  assert _remat_calls(tiny_config(data_dir)) == 0
  assert _remat_calls(tiny_config(data_dir, **{'model.remat': True})) == 2
  plain = _losses(tmp_path, data_dir, 'plain')
  remat = _losses(tmp_path, data_dir, 'remat', **{'model.remat': True})
  np.testing.assert_allclose(plain, remat, rtol=0, atol=1e-5)
