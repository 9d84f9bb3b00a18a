"""K runs in one compiled program: each member trains like its own run."""

import json

import numpy as np

from mmfusion import train
from tests.helpers import read_metrics, tiny_config


def _curves(workdir, k):
  rows = read_metrics(workdir)
  return [[r['loss'] for r in rows if r.get('member') == i] for i in range(k)]


def test_vmapped_seeds_match_single_runs(tmp_path, data_dir):
  single = tiny_config(data_dir, total_steps=10)
  train.train_and_evaluate(single, str(tmp_path / 'single'))
  alone = [r['loss'] for r in read_metrics(str(tmp_path / 'single'))]

  config = tiny_config(data_dir, total_steps=10, **{'vmap.size': 3})
  summary = train.train_and_evaluate(config, str(tmp_path / 'vmap'))
  curves = _curves(str(tmp_path / 'vmap'), 3)
  np.testing.assert_allclose(curves[0], alone, atol=1e-5)  # same seed, data
  assert not np.allclose(curves[1], curves[0])  # another seed's init
  assert [m['seed'] for m in summary['members']] == [0, 1, 2]
  mean = np.mean([m['test']['accuracy'] for m in summary['members']])
  assert summary['test']['accuracy'] == mean
  with open(tmp_path / 'vmap' / 'results.json') as f:
    assert len(json.load(f)['members']) == 3
  # One member's parameter count, not K times it.
  assert summary['num_params'] == json.load(
      open(tmp_path / 'single' / 'results.json'))['num_params']


def test_vmapped_learning_rates_scale_exactly(tmp_path, data_dir):
  base = tiny_config(data_dir, total_steps=8)
  train.train_and_evaluate(base, str(tmp_path / 'base'))
  lr = base.optimizer.learning_rate
  config = tiny_config(data_dir, total_steps=8, **{
      'vmap.size': 2, 'vmap.key': 'optimizer.learning_rate',
      'vmap.values': (lr / 10, lr)})
  summary = train.train_and_evaluate(config, str(tmp_path / 'lrs'))
  curves = _curves(str(tmp_path / 'lrs'), 2)
  alone = [r['loss'] for r in read_metrics(str(tmp_path / 'base'))]
  np.testing.assert_allclose(curves[1], alone, atol=1e-5)
  assert curves[0][-1] > curves[1][-1]  # the smaller rate learns slower
  np.testing.assert_allclose(
      [m['learning_rate'] for m in summary['members']], [lr / 10, lr], rtol=1e-6)


def test_member_init_keeps_lapack_qr_unbatched():
  """A batched QR (vmapped orthogonal init of a GRU) can deadlock XLA:CPU's
  intra-op pool; `Members.init` must give each seed's own state without one."""
  import re  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  from mmfusion.configs import av_digits  # pylint: disable=g-import-not-at-top
  from mmfusion import build, members, models  # pylint: disable=g-import-not-at-top
  config = av_digits.get_config('text')
  model = models.from_config(config.model, 10)
  tx = build.make_optimizer(config)
  example = {'text': np.zeros((1, 16), np.int32), 'label': np.zeros((1,), np.int32),
             'present/text': np.ones((1,), bool)}
  seeds = np.arange(3)
  init = lambda: members.Members(tuple(seeds), (1.0,) * 3).init(
      lambda s, l: build.create_train_state(model, tx, example, s, l))
  hlo = jax.jit(init).lower().as_text()
  qr_operands = re.findall(r'lapack_sgeqrf_ffi.*?\((tensor<[^>]*>)', hlo)
  assert qr_operands, 'the GRU should have an orthogonal (QR) initialiser'
  assert all(t.count('x') == 2 for t in qr_operands), qr_operands  # [N, N]
  stacked = jax.jit(init)()
  # Member k is the state of a single run with seed k (not compared with
  # jax.vmap's init, which could hang this test for the reason above).
  one = jax.jit(lambda s: build.create_train_state(model, tx, example, s))
  for k, seed in enumerate(seeds):
    for a, b in zip(jax.tree.leaves(stacked), jax.tree.leaves(one(seed))):
      np.testing.assert_allclose(a[k], b, rtol=1e-5, atol=1e-6)
