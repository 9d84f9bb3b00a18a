"""The multibench_affect builder, on tiny pickles laid out as MultiBench's."""

import os
import pickle

import ml_collections
import numpy as np
import pytest

from mmfusion.data import multibench
from mmfusion.data import pipeline
from mmfusion.runtime import errors

WIDTH = {'vision': 3, 'audio': 2, 'text': 4}
STEPS = {'vision_steps': 8, 'audio_steps': 0, 'text_steps': 3}


@pytest.fixture(scope='module', autouse=True)
def registered():
  """The builder under its name, for `pipeline.get_builder` (the package
  registers it in mmfusion.data.BUILDERS; this test does not rely on it)."""
  with pytest.MonkeyPatch.context() as mp:
    mp.setitem(pipeline.BUILDERS, 'multibench_affect',
               multibench.MultibenchAffect)
    yield


def series(t: int, length: int, width: int, base: float, start=None):
  """float32 [t, width] zero-padded at the front, as MultiBench's lpad:
  the last `length` steps hold base + step + feature / 10 (never 0)."""
  x = np.zeros((t, width), np.float32)
  start = t - length if start is None else start
  for k in range(t - start):
    x[start + k] = base + k + np.arange(1, width + 1) / 10
  return x


def aligned_split(rows, t=6):
  """{vision, audio, text} [N, t, F] of `rows`: (length, base)."""
  return {m: np.stack([series(t, n, WIDTH[m], base + 10 * j)
                       for n, base in rows])
          for j, m in enumerate(WIDTH)}


def mosi_like():
  """An aligned pickle (MultiBench's mosi_raw.pkl / MulT's mosi_data.pkl):
  labels [N, 1, 1]; ids a list of names, [N, 2] parts, or none."""
  train = aligned_split([(4, 100), (6, 200), (3, 300), (2, 400), (5, 500),
                         (5, 600)])
  train['text'][3] = 0  # no text: dropped, as MultiBench's drop_entry
  train['vision'][4, 3, 1] = np.nan  # dropped here (MultiBench keeps it)
  train['audio'][5, 2, 0] = -np.inf  # set to 0, as MultiBench does
  train['vision'][0, 1] = 7.0  # before the text starts (step 2): cut
  train['labels'] = np.asarray([2.5, -1.0, 0.0, 1.0, 2.0, 0.4],
                               np.float32).reshape(-1, 1, 1)
  train['id'] = [f'vid{i}[{i + 1}]' for i in range(6)]
  valid = aligned_split([(2, 100), (6, 200)])
  valid['labels'] = np.asarray([[[-2.0]], [[3.0]]], np.float32)
  valid['id'] = np.asarray([['clip', '1'], ['clip', '2']])
  test = aligned_split([(1, 100), (3, 200), (6, 300)])
  test['labels'] = np.asarray([[[0.2]], [[-0.2]], [[-3.0]]], np.float64)
  return {'train': train, 'valid': valid, 'test': test}


def unaligned_split(n, lengths, name, ts=(7, 9, 5)):
  """Each modality with its own T and its own front padding."""
  out = {}
  for j, (m, t) in enumerate(zip(WIDTH, ts)):
    out[m] = np.stack([series(t, lengths[i][j], WIDTH[m], 100 * i + 10 * j)
                       for i in range(n)])
  out['labels'] = np.linspace(-1, 1, n).astype(np.float32).reshape(-1, 1, 1)
  out['id'] = [f'{name}{i}' for i in range(n)]
  return out


def binary_like(labels_train):
  """A humor.pkl / sarcasm.pkl-like pickle (T = 4) with these labels."""
  out = {}
  for first, (split, labels) in enumerate((
      ('train', labels_train), ('valid', [0, 1]), ('test', [1, 0]))):
    part = aligned_split([(2 + i % 3, 10 * i) for i in range(len(labels))],
                         t=4)
    part['labels'] = np.asarray(labels)
    part['id'] = 100 * first + np.arange(len(labels))[:, None]  # [N, 1]
    out[split] = part
  return out


def write(path, data):
  with open(path, 'wb') as f:
    pickle.dump(data, f, protocol=pickle.HIGHEST_PROTOCOL)
  return str(path)


def _builder(data_dir, path, dataset='mosi', **overrides):
  return pipeline.get_builder(ml_collections.ConfigDict({
      'name': f'multibench_affect/{dataset}', 'data_dir': data_dir,
      'overrides': {'path': str(path), **overrides}}))


def _built(data_dir, path, dataset='mosi', **overrides):
  builder = _builder(data_dir, path, dataset, **overrides)
  pipeline.prepare(builder)
  return builder


def _examples(builder):
  """{id: example} over every split, with `split` added."""
  out = {}
  for split in builder.info.splits:
    source = builder.as_data_source(split=split)
    for i in range(len(source)):
      ex = dict(source[i])
      ex['id'] = ex['id'].decode() if isinstance(ex['id'], bytes) else ex['id']
      out[ex['id']] = {**ex, 'split': split}
  return out


@pytest.fixture(scope='module')
def mosi_pkl(tmp_path_factory):
  return write(tmp_path_factory.mktemp('mosi') / 'mosi_raw.pkl', mosi_like())


@pytest.fixture(scope='module')
def mosi(data_dir, mosi_pkl):
  return _built(data_dir, mosi_pkl, **STEPS)


def test_features_splits_and_shapes(mosi):
  features = mosi.info.features
  assert tuple(features['vision'].shape) == (8, 3)  # 6 steps padded to 8
  assert tuple(features['audio'].shape) == (6, 2)  # 0: the pickle's T
  assert tuple(features['text'].shape) == (3, 4)  # cut to 3
  assert tuple(features['target'].shape) == (1,)
  assert features['label'].names == ['not_positive', 'positive']
  assert mosi.target_names() == {'target': ('sentiment',)}
  sizes = {s: mosi.info.splits[s].num_examples for s in mosi.info.splits}
  assert sizes == {'train': 4, 'validation': 2, 'test': 3}
  ex = _examples(mosi)['vid0[1]']
  for m, steps in (('vision', 8), ('audio', 6), ('text', 3)):
    assert ex[m].shape == (steps, WIDTH[m]) and ex[m].dtype == np.float32
  assert ex['target'].dtype == np.float32
  assert features['length']['text'].np_dtype == np.int32
  assert 'aligned' in mosi.info.description
  assert '2 examples dropped' in mosi.info.description
  assert '1 audio values of -inf' in mosi.info.description


def test_front_padding_is_cut_from_the_text_start_and_padded_at_the_end(mosi):
  source = mosi_like()['train']
  ex = _examples(mosi)['vid0[1]']  # 4 real steps, from step 2
  assert ex['length'] == {'vision': 4, 'audio': 4, 'text': 3}
  np.testing.assert_array_equal(ex['vision'][:4], source['vision'][0, 2:])
  assert not ex['vision'][4:].any()  # zero-padded at the end
  assert 7.0 not in ex['vision']  # vision before the text's start is cut
  np.testing.assert_array_equal(ex['text'], source['text'][0, 2:5])
  np.testing.assert_array_equal(ex['audio'][:4], source['audio'][0, 2:])
  assert not ex['audio'][4:].any()
  assert all(ex['present'].values())
  full = _examples(mosi)['vid1[2]']  # 6 real steps: text cut to 3
  assert full['length'] == {'vision': 6, 'audio': 6, 'text': 3}
  np.testing.assert_array_equal(full['text'], source['text'][1, :3])


def test_labels_by_threshold_targets_and_ids(mosi):
  examples = _examples(mosi)
  got = {i: (int(ex['label']), float(ex['target'][0]), ex['split'])
         for i, ex in examples.items()}
  assert got == {
      'vid0[1]': (1, 2.5, 'train'), 'vid1[2]': (0, -1.0, 'train'),
      'vid2[3]': (0, 0.0, 'train'),  # a score of 0 is not positive
      'vid5[6]': (1, pytest.approx(0.4), 'train'),
      'clip/1': (0, -2.0, 'validation'), 'clip/2': (1, 3.0, 'validation'),
      'test/0': (1, pytest.approx(0.2), 'test'),  # no id: split/row
      'test/1': (0, pytest.approx(-0.2), 'test'), 'test/2': (0, -3.0, 'test')}


def test_neg_inf_audio_becomes_zero_and_the_row_stays(mosi):
  ex = _examples(mosi)['vid5[6]']  # 5 steps from step 1; -inf at step 2
  expected = mosi_like()['train']['audio'][5, 1:].copy()
  expected[1, 0] = 0.0
  np.testing.assert_array_equal(ex['audio'][:5], expected)
  assert np.isfinite(ex['audio']).all()


def test_dropped_rows_are_reported_never_silently(mosi, mosi_pkl, data_dir,
                                                  capsys):
  with open(os.path.join(mosi.data_dir, multibench.REPORT)) as f:
    rows = f.read().splitlines()
  assert rows == ['split\trow\tid\treason',
                  'train\t3\tvid3[4]\tno text (every text step is zero)',
                  'train\t4\tvid4[5]\tNaN or Inf in vision']
  capsys.readouterr()
  pipeline.prepare(_builder(data_dir, mosi_pkl, **STEPS))  # built: still said
  assert '2 example(s) of' in capsys.readouterr().out


def test_z_norm_standardises_each_feature_over_the_kept_steps(
    data_dir, mosi_pkl):
  examples = _examples(_built(data_dir, mosi_pkl, z_norm=True, **STEPS))
  ex = examples['vid0[1]']
  x = mosi_like()['train']['vision'][0, 2:].astype(np.float64)  # 4 steps
  expected = (x - x.mean(0)) / x.std(0, ddof=1)  # torch.std is unbiased
  np.testing.assert_allclose(ex['vision'][:4], expected, rtol=1e-5)
  assert np.abs(ex['vision'][:4]).max() > 1  # not the raw values
  assert not ex['vision'][4:].any()
  one = examples['test/0']  # one step: torch's std is NaN, then 0
  assert one['length']['text'] == 1 and not one['text'].any()


def test_unaligned_modalities_are_cut_each_from_its_own_start(
    data_dir, tmp_path):
  lengths = [(3, 9, 5), (0, 4, 2), (7, 1, 1)]  # vision of row 1 is absent
  data = {'train': unaligned_split(3, lengths, 'u'), 'valid': unaligned_split(
      1, lengths[:1], 'v'), 'test': unaligned_split(1, lengths[2:], 't')}
  path = write(tmp_path / 'mosi_data_noalign.pkl', data)
  builder = _built(data_dir, path, vision_steps=6, audio_steps=0,
                   text_steps=4)
  assert 'unaligned' in builder.info.description
  assert tuple(builder.info.features['audio'].shape) == (9, 2)
  examples = _examples(builder)
  first = examples['u0']
  assert first['length'] == {'vision': 3, 'audio': 9, 'text': 4}
  np.testing.assert_array_equal(first['vision'][:3],
                                data['train']['vision'][0, 4:])
  np.testing.assert_array_equal(first['text'],
                                data['train']['text'][0, 0:4])
  absent = examples['u1']
  assert absent['length']['vision'] == 0 and not absent['vision'].any()
  assert absent['present'] == {'vision': False, 'audio': True, 'text': True}
  with pytest.raises(errors.UserError, match='cannot be aligned'):
    _builder(data_dir, path, alignment='aligned')


def test_humor_and_sarcasm_labels_and_plus_minus_one_targets(
    data_dir, tmp_path):
  humor = _built(data_dir, write(tmp_path / 'humor.pkl',
                                 binary_like([0, 1, 1, 0])), 'urfunny')
  assert humor.info.features['label'].names == ['not_humorous', 'humorous']
  got = {i: (int(ex['label']), float(ex['target'][0]))
         for i, ex in _examples(humor).items() if ex['split'] == 'train'}
  assert got == {'0': (0, -1.0), '1': (1, 1.0), '2': (1, 1.0),
                 '3': (0, -1.0)}
  assert humor.target_names() == {'target': ('humor',)}
  sarcasm = _built(data_dir, write(
      tmp_path / 'sarcasm.pkl', binary_like(np.asarray(
          [[-1.0], [1.0], [1.0]]))), 'mustard')
  got = sorted((int(ex['label']), float(ex['target'][0]))
               for ex in _examples(sarcasm).values() if ex['split'] == 'train')
  assert got == [(0, -1.0), (1, 1.0), (1, 1.0)]
  with pytest.raises(errors.UserError, match=r'train row 1 \(2\)'):
    _builder(data_dir, write(tmp_path / 'bad_humor.pkl',
                             binary_like([0, 2, 1])), 'urfunny')


def test_mosei_labels_read_the_sentiment_of_seven(data_dir, tmp_path):
  data = mosi_like()
  emotions = np.full((3, 1, 6), 2.0, np.float32)  # happy, sad, ... in [0, 3]
  data['test']['labels'] = np.concatenate(
      [data['test']['labels'].astype(np.float32), emotions], axis=-1)
  assert data['test']['labels'].shape == (3, 1, 7)
  mosei = _built(data_dir, write(tmp_path / 'mosei_raw.pkl', data), 'mosei',
                 **STEPS)
  got = {i: (int(ex['label']), float(ex['target'][0]))
         for i, ex in _examples(mosei).items() if ex['split'] == 'test'}
  assert got == {'test/0': (1, pytest.approx(0.2)),
                 'test/1': (0, pytest.approx(-0.2)), 'test/2': (0, -3.0)}


def test_scores_outside_the_range_name_their_rows(data_dir, tmp_path):
  data = mosi_like()
  data['test']['labels'][1] = 7.0
  with pytest.raises(errors.UserError,
                     match=r'1 label\(s\) that CMU-MOSI cannot have: test '
                           r'row 1 \(7\)'):
    _builder(data_dir, write(tmp_path / 'x.pkl', data))


def _broken(name):
  """A pickle object broken in the way `name` says."""
  data = mosi_like()
  if name == 'list':
    return [data['train']]
  if name == 'no_valid':
    data['validation'] = data.pop('valid')
  elif name == 'no_audio':
    del data['train']['audio']
  elif name == 'mismatched_n':
    data['train']['labels'] = data['train']['labels'][:5]
  elif name == 'two_dims':
    data['valid']['text'] = data['valid']['text'][:, 0]
  elif name == 'widths':
    data['test']['vision'] = np.zeros((3, 6, 5), np.float32)
  elif name == 'no_labels':
    data['valid']['labels'] = np.zeros((2, 0), np.float32)
  return data


@pytest.mark.parametrize('name, message', [
    ('list', r'holds a list, not the dict of train, valid and test'),
    ('no_valid', r'has no valid split \(it has test, train, validation\)'),
    ('no_audio', r'train has no audio \(it has id, labels, text, vision\)'),
    ('mismatched_n', r'train has 6 vision, 6 audio, 6 text, 5 labels, 6 id'),
    ('two_dims', r'valid/text is float32\[2, 4\], not numbers \[N, T, F\]'),
    ('widths', r'vision has 3 features in train, 3 features in valid, 5 '
               r'features in test'),
    ('no_labels', r'valid/labels is float32\[2, 0\], not numbers'),
])
def test_badly_laid_out_pickles_are_one_user_error(data_dir, tmp_path, name,
                                                   message):
  path = write(tmp_path / f'{name}.pkl', _broken(name))
  with pytest.raises(errors.UserError, match=message):
    _builder(data_dir, path)


class _Exploit:
  def __init__(self, target):
    self.target = target

  def __reduce__(self):
    return (os.mkdir, (self.target,))


def test_unreadable_files_are_one_user_error_and_run_no_code(data_dir,
                                                             tmp_path):
  with pytest.raises(errors.UserError, match="needs the CMU-MOSI pickle"):
    _builder(data_dir, '')
  with pytest.raises(errors.UserError, match='no file at .*mosei_raw.pkl'):
    _builder(data_dir, tmp_path / 'nothing.pkl', 'mosei')
  garbage = tmp_path / 'garbage.pkl'
  garbage.write_text('vision,audio,text\n1,2,3\n')
  with pytest.raises(errors.UserError, match='not a readable MultiBench'):
    _builder(data_dir, garbage)
  whole = write(tmp_path / 'whole.pkl', mosi_like())
  with open(whole, 'rb') as f:
    (tmp_path / 'cut.pkl').write_bytes(f.read()[:300])
  with pytest.raises(errors.UserError, match='not a readable MultiBench'):
    _builder(data_dir, tmp_path / 'cut.pkl')
  target = str(tmp_path / 'made_by_the_pickle')
  evil = write(tmp_path / 'evil.pkl', {'train': _Exploit(target)})
  with pytest.raises(errors.UserError, match=r'holds a \w+\.mkdir'):
    _builder(data_dir, evil)
  assert not os.path.exists(target)


def test_bad_config_fields_are_one_sentence(data_dir, mosi_pkl):
  with pytest.raises(errors.UserError, match="alignment 'word' is not one"):
    _builder(data_dir, mosi_pkl, alignment='word')
  with pytest.raises(errors.UserError, match='text_steps must be a whole'):
    _builder(data_dir, mosi_pkl, text_steps=-1)
  with pytest.raises(errors.UserError, match='which .* does not have'):
    _builder(data_dir, mosi_pkl, max_len=5)


def test_a_changed_pickle_is_built_again(data_dir, tmp_path, capsys):
  path = write(tmp_path / 'mosi_raw.pkl', mosi_like())
  before = _examples(_built(data_dir, path))
  assert float(before['vid0[1]']['target'][0]) == 2.5
  data = mosi_like()
  data['train']['labels'][0] = -0.5
  write(path, data)
  os.utime(path, ns=(1, 1))  # the same size: the time tells
  capsys.readouterr()
  after = _examples(_built(data_dir, path))
  assert 'changed since' in capsys.readouterr().out
  assert float(after['vid0[1]']['target'][0]) == -0.5
  assert int(after['vid0[1]']['label']) == 0


def test_config_variants_build_a_model():
  from mmfusion import build
  from mmfusion import models
  from mmfusion.configs import multibench as config_lib
  for arg in ('', 'runlocal', 'dataset=mosei,task=classification',
              'dataset=urfunny,vision+text', 'encoder=tcn,runlocal'):
    config = config_lib.get_config(arg)
    task = build.check_config(config)
    assert task.name == config.task.name
    model = models.from_config(config.model, num_outputs=1)
    assert set(model.encoders) == set(config.data.modalities)
  config = config_lib.get_config('dataset=mustard,path=/d/s.pkl')
  assert config.data.name == 'multibench_affect/mustard'
  assert config.data.overrides['path'] == '/d/s.pkl'
  assert config.task.name == 'regression' and config.best_metric == 'mae'
  assert config.task.sentiment and config.best_mode == 'min'
  classify = config_lib.get_config('task=classification')
  assert classify.task.name == 'classification'
  assert classify.best_metric == 'accuracy'
  assert config_lib.get_config('encoder=tcn').model.encoders['audio'][
      'name'] == 'tcn'
  default = config_lib.get_config('')
  assert default.data.overrides['path'].endswith('mosi_raw.pkl')
  assert config_lib.get_config('runlocal').total_steps < 100
  for bad in ('dataset=iemocap', 'task=ranking', 'smell', 'encoder=lstm'):
    with pytest.raises(ValueError, match='config arg'):
      config_lib.get_config(bad)


@pytest.mark.slow  # a whole run through the loop
def test_the_config_trains_regression_end_to_end(data_dir, mosi_pkl,
                                                 tmp_path):
  """The runlocal config on the tiny MOSI pickle: trained a few steps,
  evaluated with MOSI's sentiment metrics."""
  from mmfusion import train
  from mmfusion.configs import multibench as config_lib
  config = config_lib.get_config(f'runlocal,path={mosi_pkl}')
  config.data.data_dir = data_dir
  config.batch_size, config.total_steps, config.num_devices = 2, 4, 1
  config.eval_every = config.checkpoint_every = 2
  config.optimizer.warmup_steps = 1
  results = train.train_and_evaluate(config, str(tmp_path / 'run'))
  assert results['step'] == 4
  test = results['test']
  assert np.isfinite(test['mae']) and 0 <= test['acc2'] <= 1
  assert test['examples'] == 3
