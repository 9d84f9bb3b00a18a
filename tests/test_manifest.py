"""The manifest builder: the user's own files in, the batch contract out."""

import csv
import json
import os
import wave

import ml_collections
import numpy as np
import pytest

from mmfusion.runtime import errors
from mmfusion.data import pipeline
from mmfusion.data import tokenizer

FIELDS = ('id', 'image', 'audio', 'text', 'age', 'label', 'split')


def _write_wav(path, wave_S, rate, channels=1):
  pcm = np.round(np.repeat(wave_S[:, None], channels, 1) * 32767)
  with wave.open(str(path), 'wb') as f:
    f.setnchannels(channels)
    f.setsampwidth(2)
    f.setframerate(rate)
    f.writeframes(pcm.astype('<i2').tobytes())


def _write_pgm(path, pixels_HxW):
  h, w = pixels_HxW.shape
  with open(path, 'wb') as f:
    f.write(b'P5\n# made by a test\n%d %d\n255\n' % (w, h))
    f.write(pixels_HxW.astype(np.uint8).tobytes())


def _folder(root, n=6):
  """n good examples: .npy and .pgm images, mono/stereo 16/8 kHz WAVs."""
  rng = np.random.default_rng(0)
  rows, truth = [], {}
  for i in range(n):
    image = rng.integers(0, 256, (12, 10), dtype=np.uint8)
    if i % 2:
      _write_pgm(root / f'im{i}.pgm', image)
    else:
      np.save(root / f'im{i}.npy', image)
    sound = 0.5 * np.sin(np.arange(800) * (0.05 + 0.01 * i))
    sound = sound.astype(np.float32)
    _write_wav(root / f'a{i}.wav', sound, 16_000, channels=1 + i % 2)
    rows.append({'id': f'ex{i}', 'image': f'im{i}.{"pgm" if i % 2 else "npy"}',
                 'audio': f'a{i}.wav', 'text': f'exemple n°{i}', 'age': 20 + i,
                 'label': ['cat', 'dog'][i % 2],
                 'split': 'train' if i < 4 else 'test'})
    truth[f'ex{i}'] = (image, sound)
  _write_wav(root / 'slow.wav', np.zeros(400, np.float32), 8_000)
  return rows, truth


def _write_csv(path, rows):
  with open(path, 'w', newline='') as f:
    writer = csv.DictWriter(f, FIELDS)
    writer.writeheader()
    writer.writerows(rows)


def _builder(data_dir, path, **overrides):
  return pipeline.get_builder(ml_collections.ConfigDict({
      'name': 'manifest/default', 'data_dir': data_dir, 'overrides': {
          'path': str(path), 'image_size': (12, 10), 'audio_samples': 1000,
          'text_length': 24, **overrides}}))


def test_csv_manifest_builds_in_the_batch_contract(tmp_path, data_dir):
  rows, truth = _folder(tmp_path)
  rows[5]['audio'] = 'slow.wav'  # 8 kHz: resampled to 400 * 2 samples
  _write_csv(tmp_path / 'manifest.csv', rows)
  builder = _builder(data_dir, tmp_path / 'manifest.csv')
  pipeline.prepare(builder)
  assert builder.info.features['label'].names == ['cat', 'dog']
  assert {s: builder.info.splits[s].num_examples for s in builder.info.splits
          } == {'train': 4, 'test': 2}
  source = builder.as_data_source(split='train')
  examples = {ex['id'].decode(): ex for ex in (source[i] for i in range(4))}
  for ident, ex in examples.items():
    image, sound = truth[ident]
    np.testing.assert_array_equal(ex['image'][..., 0], image)
    assert ex['image'].dtype == np.uint8 and ex['image'].shape == (12, 10, 1)
    assert ex['audio'].dtype == np.float32 and ex['audio'].shape == (1000,)
    np.testing.assert_allclose(ex['audio'][:800], sound, atol=1e-4)
    assert not ex['audio'][800:].any()  # zero-padded to audio_samples
    i = int(ident[2:])
    assert tokenizer.ByteTokenizer().decode(ex['text'])[0] == f'exemple n°{i}'
    assert ex['tabular'].tolist() == [20.0 + i] and ex['label'] == i % 2
  batch = next(pipeline.eval_batches(source, batch_size=4,
                                     modalities=('image', 'audio', 'text')))
  assert batch['image'].shape == (4, 12, 10, 1) and batch['present/audio'].all()


def test_jsonl_with_a_subset_of_modalities_and_hashed_splits(tmp_path,
                                                             data_dir):
  path = tmp_path / 'm.jsonl'
  with open(path, 'w') as f:
    for i in range(20):
      f.write(json.dumps({'id': i, 'text': f'row {i}', 'x': i / 2,
                          'label': i % 3}) + '\n')
  builder = _builder(data_dir, path)
  pipeline.prepare(builder)
  assert set(builder.info.features.keys()) == {'id', 'label', 'present',
                                               'text', 'tabular'}
  assert builder.info.features['label'].names == ['0', '1', '2']
  sizes = {s: builder.info.splits[s].num_examples for s in builder.info.splits}
  assert sum(sizes.values()) == 20 and sizes['train'] >= 10


def test_every_bad_row_is_named_in_one_error(tmp_path, data_dir):
  rows, _ = _folder(tmp_path)
  np.save(tmp_path / 'big.npy', np.zeros((28, 28), np.uint8))
  rows[1]['image'] = 'nowhere.npy'  # line 3: missing file
  rows[2]['label'] = 'bird'  # line 4: unknown label
  rows[3]['image'] = 'big.npy'  # line 5: wrong shape
  rows[5]['id'] = 'ex0'  # line 7: duplicate id
  _write_csv(tmp_path / 'manifest.csv', rows)
  builder = _builder(data_dir, tmp_path / 'manifest.csv',
                     labels=('cat', 'dog'))
  with pytest.raises(errors.UserError) as e:
    pipeline.prepare(builder)
  message = str(e.value)
  assert '4 bad row(s)' in message and 'skip_bad_rows' in message
  for line, why in ((3, 'file not found'), (4, "label 'bird'"),
                    (5, 'shape [28, 28, 1] is not [12, 10, 1]'),
                    (7, "id 'ex0' repeats line 2")):
    assert f'line {line} (' in message and why in message


def test_skip_flag_reports_the_skipped_rows(tmp_path, data_dir, capsys):
  rows, _ = _folder(tmp_path)
  rows[0]['audio'] = 'gone.wav'
  rows[4]['age'] = 'old'
  _write_csv(tmp_path / 'manifest.csv', rows)
  builder = _builder(data_dir, tmp_path / 'manifest.csv', skip_bad_rows=True)
  pipeline.prepare(builder)
  assert builder.info.splits['train'].num_examples == 3
  assert builder.info.splits['test'].num_examples == 1
  with open(os.path.join(builder.data_dir, 'skipped_rows.tsv')) as f:
    report = f.read().splitlines()
  assert report[0] == 'line\tid\treason'
  assert [r.split('\t')[:2] for r in report[1:]] == [['2', 'ex0'],
                                                     ['6', 'ex4']]
  assert "'old' is not a finite number" in report[2]
  assert '2 bad row(s)' in capsys.readouterr().out


def test_a_changed_manifest_is_rebuilt(tmp_path, data_dir):
  rows, _ = _folder(tmp_path)
  _write_csv(tmp_path / 'manifest.csv', rows[:5])
  pipeline.prepare(_builder(data_dir, tmp_path / 'manifest.csv'))
  _write_csv(tmp_path / 'manifest.csv', rows)
  builder = _builder(data_dir, tmp_path / 'manifest.csv')
  pipeline.prepare(builder)
  assert builder.info.splits['test'].num_examples == 2


def test_no_path_is_a_user_error(data_dir):
  with pytest.raises(errors.UserError, match='overrides'):
    pipeline.get_builder(ml_collections.ConfigDict(
        {'name': 'manifest/default', 'data_dir': data_dir, 'overrides': {}}))


def test_encoding_extra_cells_nan_pixels_and_long_cells_are_told(tmp_path):
  from mmfusion.data import manifest as manifest_lib
  from mmfusion.runtime import errors as errors_lib
  bad = tmp_path / 'latin1.csv'
  bad.write_bytes(b'id,label,text\n1,a,fine\n2,b,caf\xe9\n')
  with pytest.raises(errors_lib.UserError, match=r"is not UTF-8 text: line 3 "
                     r"has the byte b'\\xe9'; save it as UTF-8\."):
    manifest_lib.read_rows(str(bad))
  wide = tmp_path / 'wide.csv'
  wide.write_text('id,label,text\n1,a,hi,extra,cells\n2,b,' + 'x' * 200_000
                  + '\n')
  _, rows = manifest_lib.read_rows(str(wide))
  assert rows[0] == (2, {'__error__': "2 more cells than the header's 3 "
                                      "columns"})
  assert len(rows[1][1]['text']) == 200_000
  with pytest.raises(manifest_lib.MediaError, match='must be finite'):
    manifest_lib.as_pixels(np.array([[0.5, np.nan]]))


def _write_table(path, rows):
  with open(path, 'w', newline='') as f:
    writer = csv.DictWriter(f, list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)


def test_labels_and_target_columns_need_no_label_column(tmp_path, data_dir):
  cells = [('cat|dog', '0.5', 'train'), ('', '-2', 'train'),
           ('dog | owl', '1e3', 'train'), ('owl', '3', 'test')]
  _write_table(tmp_path / 'm.csv', [
      {'id': f'ex{i}', 'text': f'row {i}', 'age': i, 'labels': labels,
       'score': score, 'split': split}
      for i, (labels, score, split) in enumerate(cells)])
  builder = _builder(data_dir, tmp_path / 'm.csv', targets=('score',))
  pipeline.prepare(builder)
  features = builder.info.features
  assert set(features.keys()) == {'id', 'present', 'text', 'tabular',
                                  'labels', 'target'}
  assert features['labels'].shape == (3,)
  assert features['labels'].np_dtype == np.bool_
  assert features['target'].shape == (1,)
  assert features['target'].np_dtype == np.float32
  assert builder.target_names() == {'labels': ('cat', 'dog', 'owl'),
                                    'target': ('score',)}
  assert builder.numeric_columns() == ['age']  # the target is no input
  source = builder.as_data_source(split='train')
  examples = {ex['id'].decode(): ex for ex in (source[i] for i in range(3))}
  for i, (labels, score, _) in enumerate(cells[:3]):
    ex = examples[f'ex{i}']
    assert ex['labels'].dtype == np.bool_ and ex['target'].dtype == np.float32
    assert ex['labels'].tolist() == [n in labels for n in ('cat', 'dog', 'owl')]
    assert ex['target'].tolist() == [float(score)]
    assert ex['tabular'].tolist() == [float(i)]


def test_jsonl_label_labels_and_two_targets(tmp_path, data_dir):
  path = tmp_path / 'm.jsonl'
  with open(path, 'w') as f:
    for i in range(12):
      f.write(json.dumps({'id': i, 'text': f'row {i}', 'label': 'ab'[i % 2],
                          'labels': ['10', '2'][:i % 3], 'w': -i, 'y': i / 4,
                          'split': 'train'}) + '\n')
  builder = _builder(data_dir, path, targets=('y', 'w'))
  pipeline.prepare(builder)
  assert builder.info.features['label'].names == ['a', 'b']
  assert builder.target_names() == {'labels': ('2', '10'),
                                    'target': ('y', 'w')}
  assert 'tabular' not in builder.info.features
  source = builder.as_data_source(split='train')
  for ex in (source[i] for i in range(12)):
    i = int(ex['id'])
    assert ex['label'] == i % 2
    assert ex['labels'].tolist() == [i % 3 == 2, i % 3 >= 1]
    assert ex['target'].tolist() == [i / 4, -i]


def test_bad_labels_and_target_cells_are_bad_rows(tmp_path, data_dir):
  cells = [('cat', '1'), ('cat|zebra', '2'), ('dog', 'abc'), ('dog', ''),
           ('', 'nan'), ('dog|cat', 'inf')]
  _write_table(tmp_path / 'm.csv', [
      {'id': f'ex{i}', 'text': 'hi', 'labels': labels, 'score': score,
       'split': 'train'} for i, (labels, score) in enumerate(cells)])
  options = {'targets': ('score',), 'multilabel_classes': ('cat', 'dog')}
  with pytest.raises(errors.UserError) as e:
    pipeline.prepare(_builder(data_dir, tmp_path / 'm.csv', **options))
  message = str(e.value)
  assert '5 bad row(s)' in message and 'numeric lists' not in message
  reasons = {3: "labels 'zebra' is not one of the classes (cat, dog)",
             4: "target score 'abc' is not a real number",
             5: 'no target score', 6: "target score 'nan' is not a real number",
             7: "target score 'inf' is not a real number"}
  for line, why in reasons.items():
    assert f'line {line} ({why})' in message
  builder = _builder(data_dir, tmp_path / 'm.csv', skip_bad_rows=True,
                     **options)
  pipeline.prepare(builder)
  assert builder.info.splits['train'].num_examples == 1
  with open(os.path.join(builder.data_dir, 'skipped_rows.tsv')) as f:
    report = [r.split('\t') for r in f.read().splitlines()[1:]]
  assert {int(n): why for n, _, why in report} == reasons


@pytest.mark.parametrize('columns, overrides, message', [
    (('id', 'text', 'age'), {}, 'has no label or labels column'),
    (('id', 'label', 'age'), {'targets': ('score',)},
     r"targets names \['score'\], which the manifest"),
    (('id', 'label', 'age'), {'targets': ('label',)}, 'are reserved'),
    (('id', 'label', 'age'), {'targets': ('age',), 'numeric': ('age',)},
     'either an input or a target'),
    (('id', 'labels', 'age'), {'labels': ('a', 'b')},
     'labels lists classes, but .* has no label column'),
    (('id', 'label', 'age'), {'multilabel_classes': ('a',)},
     'has no labels column'),
    (('id', 'labels', 'age'), {'multilabel_classes': ('a|b',)},
     "without '|'"),
    (('id', 'labels', 'split'), {}, r'no labelled train rows \(in its labels'),
])
def test_targets_that_cannot_work_are_one_sentence(tmp_path, data_dir, columns,
                                                   overrides, message):
  row = {'id': 'x', 'text': 'hi', 'age': '3', 'label': 'a', 'labels': '',
         'split': 'train'}
  _write_table(tmp_path / 'm.csv', [{k: row[k] for k in columns}])
  with pytest.raises(errors.UserError, match=message):
    _builder(data_dir, tmp_path / 'm.csv', **overrides)
