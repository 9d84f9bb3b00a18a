"""The task layer: each task trains end to end from its config, `load`
predicts what evaluation scored, the contrastive losses equal their numpy
references over the global batch, and tasks that do not fit fail in one
sentence."""

import csv
import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

import mmfusion
from mmfusion import build, checkpoint, evaluate, main, tasks, train
from mmfusion.data import pipeline
from mmfusion.runtime import errors
from mmfusion.tasks import contrastive
from mmfusion.tasks import metrics
from tests.helpers import read_metrics, tiny_config


def _evaluated(config, workdir, split='test'):
  """The task's outputs of `split` as evaluation computes them from the
  newest checkpoint, member 0."""
  run = build.run(config)
  pipeline.prepare(run.builder)
  ckpt = checkpoint.Checkpointer(workdir)
  state, _ = ckpt.restore(ckpt.latest_step(), run.sharded_abstract_state())
  ckpt.close()
  fn = jax.jit(evaluate.eval_fn(run.model, run.task, run.members))
  source = run.builder.as_data_source(split=split)
  return evaluate.predictions(fn, state.params, source, config, run.mesh,
                              run.task)[0], source


def _raw(source, modalities):
  """The split's examples as `predict` takes them: arrays by modality."""
  return [{m: np.asarray(source[i][m]) for m in modalities}
          for i in range(len(source))]


# ------------------------------------------------------------ Regression ---

def test_regression_trains_scores_and_predicts_in_target_units(tmp_path,
                                                                data_dir):
  config = tiny_config(data_dir, 'regression_synergy', total_steps=12)
  workdir = str(tmp_path / 'run')
  summary = train.train_and_evaluate(config, workdir)
  assert summary['task'] == 'regression'
  for key in ('mae', 'rmse', 'pearson', 'spearman', 'mae/image', 'mae/text'):
    assert np.isfinite(summary['test'][key]), key
  assert summary['best']['metric'] == 'mae'
  assert 'mae' in read_metrics(workdir)[0]  # the train metric, logged

  want, source = _evaluated(config, workdir)
  model = mmfusion.load(workdir, checkpoint='latest')
  out = model.predict(_raw(source, config.data.modalities))
  np.testing.assert_allclose(out.outputs['values'], want['values'],
                             rtol=1e-5, atol=1e-5)
  # Evaluation's MAE is of these values against the targets, in their units.
  target_N = np.stack([source[i]['target'] for i in range(len(source))])
  np.testing.assert_allclose(
      np.abs(want['values'] - target_N).mean(), summary['test']['mae'],
      rtol=1e-5)
  assert set(out.rows()[0]['prediction']) == {'y'}


def test_regression_scale_is_the_train_splits(tmp_path, data_dir):
  run = build.run(tiny_config(data_dir, 'regression_redundancy'))
  source = run.builder.as_data_source(split='train')
  t_N = np.stack([source[i]['target'] for i in range(len(source))])[:, 0]
  mean_R, std_R = run.task.scale()
  np.testing.assert_allclose([mean_R[0], std_R[0]], [t_N.mean(), t_N.std()],
                             rtol=1e-5)


# ------------------------------------------------------------ Multilabel ---

def _multilabel_manifest(root, n=48):
  """A tabular manifest whose 3 labels are signs of its 3 numbers."""
  rng = np.random.default_rng(0)
  x_NxF = rng.normal(size=(n, 3))
  names = ('alpha', 'beta', 'gamma')
  path = os.path.join(root, 'm.csv')
  with open(path, 'w', newline='') as f:
    w = csv.writer(f)
    w.writerow(['id', 'split', 'labels', 'a', 'b', 'c'])
    for i, x in enumerate(x_NxF):
      split = 'train' if i < 32 else ('validation' if i < 40 else 'test')
      w.writerow([f'r{i}', split, '|'.join(
          k for k, v in zip(names, x) if v > 0)] + [f'{v:.4f}' for v in x])
  return path


def test_multilabel_trains_scores_and_predicts_label_probabilities(
    tmp_path, data_dir):
  config = tiny_config(data_dir, total_steps=30)
  config.task = ml_collections.ConfigDict(
      {'name': 'multilabel', 'class_balanced': True})
  config.best_metric = 'map'
  config.batch_size = 8
  config.data.name = 'manifest/default'
  config.data.modalities = ('tabular',)
  config.data.overrides = {'path': _multilabel_manifest(str(tmp_path))}
  config.model.encoders = {'tabular': {'name': 'mlp', 'features': 16}}
  config.optimizer.learning_rate = 3e-2
  workdir = str(tmp_path / 'run')
  summary = train.train_and_evaluate(config, workdir)
  test = summary['test']
  assert summary['task'] == 'multilabel'
  assert test['map'] > 0.8  # the labels are the numbers' signs
  assert {'ap/alpha', 'ap/beta', 'ap/gamma', 'micro_f1'} <= set(test)

  want, source = _evaluated(config, workdir)
  model = mmfusion.load(workdir, checkpoint='latest')
  examples = [dict(zip('abc', map(float, source[i]['tabular'])))
              for i in range(len(source))]
  out = model.predict(examples)
  np.testing.assert_allclose(out.probabilities, want['probabilities'],
                             atol=1e-6)
  labels_NxC = np.stack([source[i]['labels'] for i in range(len(source))])
  logit = lambda p: np.log(p) - np.log1p(-p)
  np.testing.assert_allclose(
      metrics.multilabel(logit(want['probabilities'].astype(np.float64)),
                         labels_NxC)['map'], test['map'], rtol=1e-4)
  row = out.rows()[0]
  assert row['prediction'] == [k for k, p in row['probabilities'].items()
                               if p >= 0.5]


def test_class_balanced_weights_positives_by_rarity():
  data = type('D', (), {'targets': {'labels': {
      'names': ['a', 'b'], 'positives': [1, 3], 'examples': 4}}})()
  task = tasks.multilabel.Multilabel(class_balanced=True, data=data)
  np.testing.assert_allclose(task.pos_weight(), [3.0, 1 / 3])
  logits = jnp.asarray([[0.5, -1.0]])
  labels = jnp.asarray([[1.0, 1.0]])
  want = (3.0 * np.log1p(np.exp(-0.5)) + (1 / 3) * np.log1p(np.exp(1.0))) / 2
  got, _ = task.loss(logits, {'labels': labels})
  np.testing.assert_allclose(got, want, rtol=1e-6)


# ----------------------------------------------------------- Contrastive ---

def _unit(x):
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _out(a, b, log_scale, bias=0.0, present_a=None, present_b=None):
  n = len(a)
  return {'a': jnp.asarray(a, jnp.float32), 'b': jnp.asarray(b, jnp.float32),
          'present_a': jnp.asarray(np.ones(n, bool) if present_a is None
                                   else present_a),
          'present_b': jnp.asarray(np.ones(n, bool) if present_b is None
                                   else present_b),
          'log_scale': jnp.float32(log_scale), 'bias': jnp.float32(bias)}


@pytest.mark.parametrize('loss_fn', ['infonce', 'siglip'])
def test_contrastive_losses_equal_their_numpy_references(loss_fn):
  rng = np.random.default_rng(0)
  a, b = _unit(rng.normal(size=(6, 4))), _unit(rng.normal(size=(6, 4)))
  task = contrastive.Contrastive(loss_fn=loss_fn)
  got, _ = task.loss(_out(a, b, 1.3, -2.0 if loss_fn == 'siglip' else 0.0),
                     {})
  want = (metrics.infonce_loss(a, b, 1.3) if loss_fn == 'infonce' else
          metrics.siglip_loss(a, b, 1.3, -2.0))
  np.testing.assert_allclose(got, want, rtol=1e-5)

  # An absent tower takes the pair out as positive and as negative.
  keep = np.array([1, 1, 0, 1, 1, 0], bool)
  got, _ = task.loss(_out(a, b, 1.3, -2.0 if loss_fn == 'siglip' else 0.0,
                          present_b=keep), {})
  want = (metrics.infonce_loss(a[keep], b[keep], 1.3) if loss_fn == 'infonce'
          else metrics.siglip_loss(a[keep], b[keep], 1.3, -2.0))
  np.testing.assert_allclose(got, want, rtol=1e-5)


@pytest.mark.parametrize('loss_fn', ['infonce', 'siglip'])
def test_negatives_come_from_the_global_batch_on_8_devices(loss_fn):
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:8]), ('data',))
  rng = np.random.default_rng(1)
  a, b = _unit(rng.normal(size=(32, 8))), _unit(rng.normal(size=(32, 8)))
  out = _out(a, b, 2.0, -1.0)
  one = contrastive.Contrastive(loss_fn=loss_fn).loss(out, {})[0]
  task = contrastive.Contrastive(loss_fn=loss_fn, mesh=mesh)
  rows = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec('data'))
  sharded = {k: jax.device_put(v, rows) if v.ndim else v
             for k, v in out.items()}
  eight = jax.jit(lambda o: task.loss(o, {})[0])(sharded)
  np.testing.assert_allclose(eight, one, rtol=1e-5)
  # The mean of 8 local-shard losses (4 examples each) is another number:
  # the test would see a step that only used its shard's negatives.
  local = np.mean([contrastive.Contrastive(loss_fn=loss_fn).loss(
      _out(a[i:i + 4], b[i:i + 4], 2.0, -1.0), {})[0]
                   for i in range(0, 32, 4)])
  assert abs(local - float(one)) > 1e-3


def test_a_tower_with_nothing_present_has_finite_gradients():
  """A zero row (every modality of the tower absent) is left out of the
  loss; its gradient must be zero, not the NaN of d|z|/dz at z = 0."""
  z_BxD = jnp.array([[3.0, 4.0], [0.0, 0.0]])
  np.testing.assert_allclose(contrastive.unit(z_BxD),
                             [[0.6, 0.8], [0.0, 0.0]])
  valid_B = jnp.array([True, False])
  loss = lambda z: contrastive.infonce(
      contrastive.unit(z) @ contrastive.unit(z).T * 10, valid_B)
  grad = jax.grad(loss)(z_BxD)
  assert np.isfinite(grad).all() and np.all(grad[1] == 0)


def test_contrastive_trains_end_to_end_and_exports_embeddings(tmp_path,
                                                             data_dir):
  config = tiny_config(data_dir, 'redundancy', total_steps=12)
  config.task = ml_collections.ConfigDict(
      {'name': 'contrastive', 'loss_fn': 'siglip', 'width': 16,
       'towers': (('image',), ('text',))})
  config.best_metric = 'recall@1'
  workdir = str(tmp_path / 'run')
  summary = train.train_and_evaluate(config, workdir)
  test = summary['test']
  for key in ('recall@1', 'a_to_b/recall@5', 'b_to_a/recall@10',
              'median_rank'):
    assert np.isfinite(test[key]), key
  assert 'accuracy/image' not in test  # towers are not scored on subsets

  model = mmfusion.load(workdir, checkpoint='latest')
  source = build.run(config).builder.as_data_source(split='test')
  out = model.predict(_raw(source, config.data.modalities))
  a, b = out.embeddings['a'], out.embeddings['b']
  np.testing.assert_allclose(np.linalg.norm(a, axis=-1), 1.0, rtol=1e-5)
  # Evaluation's recall is that of these embeddings.
  got = metrics.retrieval(a @ b.T)
  np.testing.assert_allclose(got['a_to_b/recall@5'],
                             test['a_to_b/recall@5'], atol=1e-6)

  emb = str(tmp_path / 'emb.npy')
  inputs = str(tmp_path / 'in.jsonl')
  with open(inputs, 'w') as f:
    for i in range(4):
      f.write(json.dumps({'id': f'x{i}', 'image': source[i]['image'].tolist(),
                          'text': source[i]['text'].tolist()}) + '\n')
  from mmfusion import predict  # pylint: disable=g-import-not-at-top
  predict.run(workdir, inputs, str(tmp_path / 'out.jsonl'), checkpoint='latest',
              embeddings=emb)
  np.testing.assert_allclose(np.load(emb), np.concatenate([a, b], -1)[:4],
                             atol=1e-5)
  # A whole split, ids with it, for retrieval elsewhere.
  done = predict.run_split(workdir, 'test', str(tmp_path / 'test.jsonl'),
                           checkpoint='latest', embeddings=str(
                               tmp_path / 'test.npz'))
  assert done['written'] == len(source)
  saved = np.load(tmp_path / 'test.npz')
  np.testing.assert_allclose(saved['a'], a, atol=1e-5)
  with open(tmp_path / 'test.jsonl') as f:
    assert [json.loads(l)['id'] for l in f] == list(range(len(source)))


# ------------------------------------------------------------- Bad input ---

@pytest.mark.parametrize('task, message', [
    ({'name': 'multilabel'}, "needs the target 'labels'"),
    ({'name': 'regression'}, "needs the target 'target'"),
    ({'name': 'contrastive', 'towers': (('image',), ())}, 'leaves a tower '
     'empty'),
    ({'name': 'contrastive', 'towers': (('image',), ('audio',))},
     'names audio, which data.modalities'),
    ({'name': 'contrastive', 'towers': (('image',), ('image', 'text'))},
     'in both towers'),
    ({'name': 'contrastive', 'towers': (('image',), ('text',)),
      'loss_fn': 'triplet'}, "option 'loss_fn' must be"),
    ({'name': 'classification', 'loss_fn': 'l1'}, "has no option 'loss_fn'"),
    ({'name': 'ranking'}, "unknown task 'ranking'"),
])
def test_a_task_that_does_not_fit_is_one_sentence(task, message, tmp_path,
                                                  data_dir, capsys):
  config = tiny_config(data_dir)
  config.task = ml_collections.ConfigDict(task)
  if task['name'] == 'contrastive':
    config.best_metric = 'recall@1'
  workdir = str(tmp_path / 'run')
  with pytest.raises(SystemExit) as e:
    main.train(config, workdir)
  err = capsys.readouterr().err.strip()
  assert e.value.code == 2 and len(err.splitlines()) == 1, err
  assert message in err, err
  assert not os.path.exists(workdir)


def test_late_fusion_of_probabilities_is_refused_for_regression(data_dir):
  config = tiny_config(data_dir, 'regression_synergy')
  config.model.fusion = 'late_poe'
  with pytest.raises(errors.UserError, match='late_logits or late_weighted'):
    build.run(config)


# ------------------------------------------------- Each task's head once ---

def _data(task_name):
  from mmfusion.data import info as info_lib  # pylint: disable=g-import-not-at-top
  targets = {'label': {'names': [str(i) for i in range(4)]},
             'labels': {'names': ['p', 'q', 'r'], 'positives': [2, 5, 1],
                        'examples': 8},
             'target': {'names': ['y', 'z'], 'mean': [1.0, -2.0],
                        'std': [2.0, 0.5]}}
  return info_lib.DataInfo(
      name='synthetic_interactions/redundancy', modalities=('image', 'text'),
      classes=tuple(targets['label']['names']),
      inputs={'image': ((100,), 'float32'), 'text': ((50,), 'float32')},
      preprocessing={}, targets=targets)


@pytest.mark.parametrize('fusion', ['concat', 'late_logits'])
@pytest.mark.parametrize('task_config', [
    {'name': 'classification'},
    {'name': 'multilabel', 'class_balanced': True},
    {'name': 'regression', 'loss_fn': 'mse'},
    {'name': 'contrastive', 'towers': (('image',), ('text',)), 'width': 8},
], ids=lambda c: c['name'])
def test_every_task_head_trains_on_the_seed_model(task_config, fusion):
  from mmfusion.configs import seed as seed_config  # pylint: disable=g-import-not-at-top
  model_config = seed_config.get_config().model
  model_config.fusion = fusion
  data = _data(task_config['name'])
  task = tasks.bind(tasks.make(ml_collections.ConfigDict(task_config)), data)
  model = task.model(model_config)
  rng = np.random.default_rng(0)
  batch = {k: rng.normal(size=shape).astype(dtype) if dtype.kind == 'f' else
           np.ones(shape, dtype) for k, (shape, dtype) in
           data.batch_spec(8, task.TARGETS).items()}
  if 'label' in batch:
    batch['label'] = rng.integers(0, 4, 8).astype(np.int32)
  if 'labels' in batch:
    batch['labels'] = (rng.random((8, 3)) < 0.4).astype(np.float32)
  params = model.init(jax.random.PRNGKey(0), batch)['params']
  loss_fn = lambda p: task.loss(model.apply({'params': p}, batch)[0], batch)
  (loss, shown), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(
      params)
  assert np.isfinite(loss) and set(shown) == {task.TRAIN_METRIC}
  # Every parameter learns, but the embeddings that stand in for an absent
  # modality (all are present here).
  for path, g in jax.tree_util.tree_leaves_with_path(grads):
    name = jax.tree_util.keystr(path)
    if 'missing_' not in name:
      assert np.any(np.asarray(g) != 0), name


def test_zero_shot_classifies_by_the_nearest_class_prompt():
  from mmfusion.data import info as info_lib  # pylint: disable=g-import-not-at-top
  from mmfusion.data import tokenizer  # pylint: disable=g-import-not-at-top
  data = info_lib.DataInfo(
      name='av_digits/clean', modalities=('image', 'text'),
      classes=('zero', 'one', 'two'),
      inputs={'image': ((6,), 'float32'), 'text': ((8,), 'int32')},
      preprocessing={'text': {'tokenizer': 'bytes'}},
      targets={'label': {'names': ['zero', 'one', 'two']}})
  task = tasks.bind(tasks.make(ml_collections.ConfigDict({
      'name': 'contrastive', 'towers': (('image',), ('text',)), 'width': 4,
      'zero_shot': True, 'prompt': 'a {}'})), data)
  model_config = ml_collections.ConfigDict({
      'encoders': {'image': {'name': 'mlp', 'features': 8},
                   'text': {'name': 'gru', 'features': 8}},
      'fusion': 'concat', 'fusion_kwargs': {}, 'early_encoder': {},
      'head_hidden': (), 'remat': False, 'dtype': 'float32',
      'kernels': 'flax'})
  model = task.model(model_config)
  batch = {'image': np.random.default_rng(0).normal(size=(5, 6)).astype(
      np.float32), 'text': np.zeros((5, 8), np.int32)}
  params = model.init(jax.random.PRNGKey(0), batch)['params']
  out, _ = model.apply({'params': params}, batch)
  # The prompts are tower b's embeddings of 'a zero', 'a one', 'a two'.
  prompts = tokenizer.ByteTokenizer().encode(['a zero', 'a one', 'a two'], 8)
  p, _ = model.apply({'params': params}, {'image': batch['image'][:3],
                                          'text': prompts})
  np.testing.assert_allclose(out['zero_shot'], out['a'] @ p['b'].T,
                             atol=1e-6)
  gathered = {k: np.asarray(out[k]) for k in task.per_example(out, batch)}
  label = np.asarray(out['zero_shot']).argmax(-1)
  label[0] = (label[0] + 1) % 3  # one of five wrong
  got = task.scores(gathered, {'label': label})['zero_shot_accuracy']
  assert got == pytest.approx(0.8)
  assert task.TARGETS == ('label',)  # zero-shot is scored on the label
