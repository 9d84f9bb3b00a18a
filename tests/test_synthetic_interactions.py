"""The synthetic_interactions builder: mechanisms, determinism, batches."""

import hashlib

import ml_collections
import numpy as np
import pytest

from mmfusion.data import pipeline
from mmfusion.data import synthetic_interactions as si
from mmfusion.runtime import errors

TINY = {'num_train': 64, 'num_validation': 20, 'num_test': 20}


def _config(name, data_dir, **overrides):
  return ml_collections.ConfigDict({
      'name': f'synthetic_interactions/{name}', 'data_dir': data_dir,
      'overrides': {**TINY, **overrides}})


def _latents(name, n=2000):
  config = {c.name: c for c in si.SyntheticInteractions.BUILDER_CONFIGS}[name]
  return si.latents(config, n, np.random.default_rng(0))


def test_redundancy_shares_the_label_with_every_modality():
  y, z = _latents('redundancy_3mod')
  for m in ('image', 'text', 'tabular'):
    np.testing.assert_array_equal(z[m], y)


def test_uniqueness_gives_the_label_to_one_modality_only():
  y, z = _latents('uniqueness_text')
  np.testing.assert_array_equal(z['text'], y)
  assert np.mean(z['image'] == y) < 0.2  # chance is 0.1


def test_synergy_label_is_the_sum_mod_c_and_unknowable_from_one_modality():
  y, z = _latents('synergy_3mod', n=20_000)
  np.testing.assert_array_equal(y, (z['image'] + z['text'] + z['tabular']) % 10)
  for m in z:  # the best guess of y from one latent stays at chance (0.1)
    table = np.histogram2d(z[m], y, bins=10)[0]
    assert table.max(axis=1).sum() / len(y) < 0.12


def test_mixture_draws_every_mechanism():
  y, z = _latents('mixture', n=5000)
  both, only_image = np.mean((z['image'] == y) & (z['text'] == y)), np.mean(
      (z['image'] == y) & (z['text'] != y))
  assert 0.15 < both < 0.35 and 0.15 < only_image < 0.35


def test_build_is_deterministic_and_readable(data_dir, tmp_path):
  first = pipeline.get_builder(_config('synergy', data_dir))
  second = pipeline.get_builder(_config('synergy', str(tmp_path)))
  for b in (first, second):
    pipeline.prepare(b)
  a, b = (x.as_data_source(split='train') for x in (first, second))
  assert len(a) == TINY['num_train']
  for i in (0, 17, 63):
    np.testing.assert_array_equal(a[i]['image'], b[i]['image'])
    assert a[i]['label'] == b[i]['label']
  assert a[0]['image'].shape == (100,) and a[0]['text'].shape == (50,)


def test_batches_follow_the_contract_and_resume(data_dir):
  builder = pipeline.get_builder(_config('redundancy', data_dir))
  pipeline.prepare(builder)
  source = builder.as_data_source(split='train')
  make = lambda: iter(pipeline.train_batches(
      source, batch_size=16, seed=3, modalities=('image', 'text')))
  it = make()
  batch = next(it)
  assert batch['image'].shape == (16, 100) and batch['label'].dtype == np.int32
  assert batch['present/text'].dtype == np.bool_ and batch['present/text'].all()
  for _ in range(5):  # cross an epoch boundary (64 examples = 4 batches)
    next(it)
  state, expected = it.get_state(), next(it)
  resumed = make()
  resumed.set_state(state)
  np.testing.assert_array_equal(next(resumed)['image'], expected['image'])


def test_in_memory_and_streamed_batches_are_equal_and_epochs_permute(data_dir):
  builder = pipeline.get_builder(_config('redundancy', data_dir))
  pipeline.prepare(builder)
  source = builder.as_data_source(split='train')  # 64 examples
  make = lambda limit: iter(pipeline.train_batches(
      source, batch_size=24, seed=5, modalities=('image', 'text'),
      in_memory_bytes=limit))
  assert pipeline.in_memory(source, ('image',), 0) is None
  memory, streamed = make(2**30), make(0)
  labels = []
  for _ in range(8):  # 192 rows = 3 epochs; batches straddle their ends
    a, b = next(memory), next(streamed)
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])
    labels.append(a['label'])
  epochs = np.concatenate(labels).reshape(3, 64)
  everything = np.sort([source[i]['label'] for i in range(64)])
  for epoch in epochs:  # each epoch visits every example once
    np.testing.assert_array_equal(np.sort(epoch), everything)
  assert (epochs[0] != epochs[1]).any()  # reshuffled


def test_eval_batches_cover_each_example_once(data_dir):
  builder = pipeline.get_builder(_config('redundancy', data_dir))
  pipeline.prepare(builder)
  source = builder.as_data_source(split='test')
  labels = [b['label'][b['valid']] for b in pipeline.eval_batches(
      source, batch_size=8, modalities=('image',))]
  assert sum(len(l) for l in labels) == TINY['num_test']
  np.testing.assert_array_equal(np.concatenate(labels),
                                [source[i]['label'] for i in range(20)])


@pytest.mark.parametrize('data, message', [
    ({'name': 'nope/x'}, "unknown dataset 'nope'"),
    ({'name': 'synthetic_interactions/nope'}, 'unknown synthetic_interactions config'),
    ({'name': 'synthetic_interactions/synergy', 'overrides': {'nosie': 1.0}},
     "has ['nosie']"),
])
def test_bad_data_config_is_one_sentence(data, message):
  with pytest.raises(errors.UserError, match=message.replace('[', r'\[').replace(']', r'\]')):
    pipeline.get_builder(ml_collections.ConfigDict(data))


def test_modality_dropout_is_recorded_and_repeatable(data_dir):
  builder = pipeline.get_builder(_config('redundancy', data_dir))
  pipeline.prepare(builder)
  source = builder.as_data_source(split='train')
  make = lambda: iter(pipeline.train_batches(
      source, batch_size=32, seed=3, modalities=('image', 'text'),
      modality_dropout={'image': 0.5}))
  first, again = [next(make()) for _ in range(2)]
  hidden = ~first['present/image']
  assert 0 < hidden.sum() < 32 and first['present/text'].all()
  np.testing.assert_array_equal(hidden, ~again['present/image'])
  with pytest.raises(errors.UserError, match="modality_dropout names"):
    next(iter(pipeline.train_batches(
        source, batch_size=8, seed=0, modalities=('image',),
        modality_dropout={'audio': 0.5})))


def test_classification_configs_keep_their_committed_bytes():
  # Digest of the data of the first release; regression configs must not
  # move a single draw of the classification ones.
  h = hashlib.sha1()
  for config in si.SyntheticInteractions.BUILDER_CONFIGS:
    if config.latent != 'categorical':
      continue
    for split in range(3):
      arrays = si.generate(config, split, 32)
      for key in sorted(arrays):
        h.update(arrays[key].tobytes())
  assert h.hexdigest()[:16] == '6ece5fc8c88b1902'


def _continuous(name, n=20_000):
  config = {c.name: c for c in si.SyntheticInteractions.BUILDER_CONFIGS}[name]
  return si.continuous_latents(config, n, np.random.default_rng(0))


def _corr(a, b):
  return abs(np.corrcoef(a, b)[0, 1])


def _additive_r2(parts, y, degree=3):
  """R^2 of the best sum of one polynomial per part: what late fusion fits."""
  x_NxF = np.stack([np.ones_like(y)] + [p**k for p in parts
                                         for k in range(1, degree + 1)], 1)
  residual = y - x_NxF @ np.linalg.lstsq(x_NxF, y, rcond=None)[0]
  return 1 - residual.var() / y.var()


def test_regression_redundancy_and_uniqueness_targets():
  y, u = _continuous('regression_redundancy_3mod')
  assert 0.95 < y.var() < 1.05
  for m in ('image', 'text', 'tabular'):
    np.testing.assert_array_equal(u[m], y)
  y, u = _continuous('regression_uniqueness_text')
  np.testing.assert_array_equal(u['text'], y)
  assert _corr(u['image'], y) < 0.03 and _corr(u['image']**2, y) < 0.03


def test_regression_synergy_is_a_product_no_sum_of_modalities_fits():
  two, three = ('image', 'text'), ('image', 'text', 'tabular')
  for name, mods in (('regression_synergy', two),
                     ('regression_synergy_3mod', three)):
    y, u = _continuous(name)
    np.testing.assert_allclose(y, np.prod([u[m] for m in mods], 0))
    assert 0.9 < y.var() < 1.1
    for m in mods:  # neither a latent nor its square says anything of y
      assert _corr(u[m], y) < 0.06 and _corr(u[m]**2, y) < 0.06
    assert _additive_r2([u[m] for m in mods], y) < 0.01


def test_regression_mixture_draws_every_mechanism():
  y, u = _continuous('regression_mixture', n=5000)
  both = np.mean((u['image'] == y) & (u['text'] == y))
  only_image = np.mean((u['image'] == y) & (u['text'] != y))
  synergy = np.mean((u['image'] != y) & (u['text'] != y))
  assert all(0.15 < f < 0.35 for f in (both, only_image, synergy))


def _readout(config, n=3000):
  """Least-squares readout per modality fitted where every latent is y."""
  arrays = si.generate(config, 0, n)
  y = arrays['target'][:, 0]
  return {m: np.linalg.lstsq(arrays[m], y, rcond=None)[0]
          for m, _ in config.modalities}


def test_regression_views_see_their_latents_and_synergy_needs_both():
  configs = {c.name: c for c in si.SyntheticInteractions.BUILDER_CONFIGS}
  w = _readout(configs['regression_redundancy'])  # directions are shared
  arrays = si.generate(configs['regression_synergy'], 2, 3000)
  y = arrays['target'][:, 0].astype(np.float64)
  u_image, u_text = arrays['image'] @ w['image'], arrays['text'] @ w['text']
  assert _corr(u_image * u_text, y) > 0.8
  assert _corr(u_image, y) < 0.1 and _corr(u_text, y) < 0.1
  assert _additive_r2([u_image, u_text], y) < 0.02
  arrays = si.generate(configs['regression_uniqueness_image'], 2, 3000)
  y = arrays['target'][:, 0]
  assert _corr(arrays['image'] @ w['image'], y) > 0.9
  assert _corr(arrays['text'] @ w['text'], y) < 0.1


def test_regression_build_has_a_float_target_and_no_label(data_dir):
  builder = pipeline.get_builder(_config('regression_synergy', data_dir))
  pipeline.prepare(builder)
  features = builder.info.features
  assert 'label' not in features and features['target'].shape == (1,)
  assert features['target'].np_dtype == np.float32
  assert builder.target_names() == {'target': ('y',)}
  source = builder.as_data_source(split='validation')
  assert source[0]['target'].shape == (1,)
  assert source[0]['target'].dtype == np.float32
  # TFDS shuffles the records: match them to the generated rows by image.
  expected = si.generate(builder.builder_config, 1, TINY['num_validation'])
  for example in (source[i] for i in range(len(source))):
    row = np.flatnonzero((expected['image'] == example['image']).all(1))
    np.testing.assert_array_equal(example['target'], expected['target'][row[0]])
  classify = pipeline.get_builder(_config('synergy', data_dir))
  assert classify.target_names() == {}
