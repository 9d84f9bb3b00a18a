"""The karpathy_captions builder, on tiny COCO- and Flickr-style split files."""

import json
import os

import ml_collections
import numpy as np
import pytest

from mmfusion.runtime import errors
from mmfusion.data import karpathy
from mmfusion.data import pipeline
from mmfusion.data import tokenizer

TINY = {'image_size': 8, 'text_length': 32}
# Each picture is 36x18: a red band left, a blue band right and its own
# colour in the centre square, so the crop and the image-id pairing show.
RED, BLUE = (255, 0, 0), (0, 0, 255)

# COCO (dataset_coco.json): (folder, cocoid, split, captions, centre colour)
COCO = [
    ('train2014', 9, 'train', ['A cat on a mat. ', 'A sleepy cat.',
                               'Cat.'], (250, 250, 0)),
    ('train2014', 25, 'train', ['Two dogs run.', 'Dogs in a park.'],
     (0, 250, 250)),
    ('val2014', 42, 'restval', ['A red bus.', 'A bus on a road.'],
     (250, 0, 250)),
    ('val2014', 73, 'val', ['A boat.', 'A boat at sea.'], (0, 250, 0)),
    ('val2014', 74, 'val', ['A kite.', 'A kite in the sky.'], (120, 60, 0)),
    ('val2014', 133, 'test', ['A bed.', 'A made bed.'], (0, 60, 120)),
    ('val2014', 136, 'test', ['A giraffe.', 'A tall giraffe.'],
     (60, 120, 60)),
]
# Flickr30k (dataset_flickr30k.json): (filename, split, captions, colour)
FLICKR = [
    ('1000092795.jpg', 'train', ['Two young guys.', 'Two men outside.'],
     (250, 250, 0)),
    ('10002456.jpg', 'train', ['Workers look down.'], (0, 250, 250)),
    ('1000268201.jpg', 'val', ['A child in a pink dress.'], (250, 0, 250)),
    ('1000344755.jpg', 'test', ['A man on a ladder.', 'A man fixes a window.'],
     (0, 250, 0)),
]


def _picture(path, colour, mode='RGB'):
  from PIL import Image
  x = np.zeros((18, 36, 3), np.uint8)
  x[:, :9], x[:, 9:27], x[:, 27:] = RED, colour, BLUE
  Image.fromarray(x).convert(mode).save(path, quality=95)


def _sentences(captions, imgid, first_sentid):
  return [{'tokens': c.lower().strip(' .').split(), 'raw': c, 'imgid': imgid,
           'sentid': first_sentid + k} for k, c in enumerate(captions)]


def _coco(root, rows=COCO):
  """dataset_coco.json and train2014/, val2014/ under `root`."""
  images = []
  for imgid, (folder, cocoid, split, captions, colour) in enumerate(rows):
    os.makedirs(root / folder, exist_ok=True)
    name = f'COCO_{folder}_{cocoid:012d}.jpg'
    _picture(root / folder / name, colour)
    sentences = _sentences(captions, imgid, 1000 * cocoid)
    images.append({'filepath': folder, 'sentids': [s['sentid'] for s in
                                                   sentences],
                   'filename': name, 'imgid': imgid, 'split': split,
                   'sentences': sentences, 'cocoid': cocoid})
  path = root / 'dataset_coco.json'
  path.write_text(json.dumps({'images': images, 'dataset': 'coco'}))
  return path


def _flickr(root):
  """dataset_flickr30k.json and the images folder flickr30k-images/."""
  folder = root / 'flickr30k-images'
  folder.mkdir(parents=True)
  images = []
  for imgid, (name, split, captions, colour) in enumerate(FLICKR):
    _picture(folder / name, colour, mode='L' if imgid == 1 else 'RGB')
    sentences = _sentences(captions, imgid, 5 * imgid)
    images.append({'sentids': [s['sentid'] for s in sentences],
                   'imgid': imgid, 'sentences': sentences, 'split': split,
                   'filename': name})
  path = root / 'dataset_flickr30k.json'
  path.write_text(json.dumps({'images': images, 'dataset': 'flickr30k'}))
  return path, folder


@pytest.fixture(scope='module', autouse=True)
def registered():
  """The builder under its name, as mmfusion.data.BUILDERS will list it."""
  with pytest.MonkeyPatch.context() as mp:
    mp.setitem(pipeline.BUILDERS, 'karpathy_captions',
               karpathy.KarpathyCaptions)
    yield


@pytest.fixture(scope='module')
def coco(tmp_path_factory):
  root = tmp_path_factory.mktemp('coco')
  return _coco(root), root


@pytest.fixture(scope='module')
def flickr(tmp_path_factory):
  return _flickr(tmp_path_factory.mktemp('flickr'))


def _builder(data_dir, annotations, images, **overrides):
  return pipeline.get_builder(ml_collections.ConfigDict({
      'name': 'karpathy_captions/default', 'data_dir': data_dir,
      'overrides': {'annotations': str(annotations), 'images_dir': str(images),
                    **TINY, **overrides}}))


def _built(data_dir, annotations, images, **overrides):
  builder = _builder(data_dir, annotations, images, **overrides)
  pipeline.prepare(builder)
  return builder


def _examples(builder, split):
  """The split's examples, sorted by (id, sentid), captions as str."""
  source = builder.as_data_source(split=split)
  out = []
  for i in range(len(source)):
    ex = dict(source[i])
    ex['captions'] = [c.decode() for c in ex['captions']]
    out.append(ex)
  return sorted(out, key=lambda ex: (int(ex['id']), int(ex['sentid'])))


def _text(ex):
  return tokenizer.ByteTokenizer().decode(ex['text'])[0]


def _counts(builder):
  return {s: builder.info.splits[s].num_examples for s in builder.info.splits}


@pytest.fixture(scope='module')
def coco_all(data_dir, coco):
  return _built(data_dir, *coco)


def test_coco_all_captions_one_example_per_pair_in_train(coco_all):
  # train: 3 + 2 captions, and restval's 2; evaluation: one per image.
  assert _counts(coco_all) == {'train': 7, 'validation': 2, 'test': 2}
  train = _examples(coco_all, 'train')
  assert [(int(ex['id']), int(ex['sentid'])) for ex in train] == [
      (9, 9000), (9, 9001), (9, 9002), (25, 25000), (25, 25001),
      (42, 42000), (42, 42001)]
  assert [_text(ex) for ex in train[:3]] == [
      'A cat on a mat.', 'A sleepy cat.', 'Cat.']
  for ex in train:
    assert ex['image'].shape == (8, 8, 3) and ex['image'].dtype == np.uint8
    assert ex['text'].shape == (32,) and ex['text'].dtype == np.int32
    assert ex['present'] == {'image': True, 'text': True}
  test = _examples(coco_all, 'test')
  assert [int(ex['id']) for ex in test] == [133, 136]
  assert [_text(ex) for ex in test] == ['A bed.', 'A giraffe.']  # the first
  assert [int(ex['sentid']) for ex in test] == [133000, 136000]


def test_every_reference_caption_is_kept_raw_and_stripped(coco_all):
  by_id = {int(ex['id']): ex for ex in _examples(coco_all, 'train')}
  assert by_id[9]['captions'] == ['A cat on a mat.', 'A sleepy cat.', 'Cat.']
  for split in ('validation', 'test'):
    for ex in _examples(coco_all, split):
      row = next(r for r in COCO if r[1] == int(ex['id']))
      assert ex['captions'] == [c.strip() for c in row[3]]


def test_image_is_the_centre_square_of_its_own_file(coco_all):
  colours = {cocoid: colour for _, cocoid, _, _, colour in COCO}
  for split in ('train', 'validation', 'test'):
    for ex in _examples(coco_all, split):
      im = ex['image'].astype(int)
      # The red and blue bands lie outside the centre square.
      np.testing.assert_allclose(im[1:-1, 1:-1].reshape(-1, 3).mean(0),
                                 colours[int(ex['id'])], atol=12)
      # Every pixel, the corners too (JPEG blurs them), is nearer its own
      # colour than the bands'.
      own = np.abs(im - colours[int(ex['id'])]).sum(-1)
      assert (own < np.abs(im - RED).sum(-1)).all()
      assert (own < np.abs(im - BLUE).sum(-1)).all()


def test_first_caption_gives_one_train_example_per_image(data_dir, coco):
  builder = _built(data_dir, *coco, captions='first')
  assert _counts(builder) == {'train': 3, 'validation': 2, 'test': 2}
  train = _examples(builder, 'train')
  assert [(int(ex['id']), _text(ex)) for ex in train] == [
      (9, 'A cat on a mat.'), (25, 'Two dogs run.'), (42, 'A red bus.')]
  assert len(train[0]['captions']) == 3


def test_restval_apart_is_a_split_of_its_own(data_dir, coco):
  builder = _built(data_dir, *coco, restval_in_train=False)
  assert _counts(builder) == {'train': 5, 'validation': 2, 'test': 2,
                              'restval': 2}
  assert {int(ex['id']) for ex in _examples(builder, 'restval')} == {42}
  assert 42 not in {int(ex['id']) for ex in _examples(builder, 'train')}


def test_flickr_images_are_read_by_filename_and_named_by_imgid(data_dir,
                                                               flickr):
  builder = _built(data_dir, *flickr)
  assert _counts(builder) == {'train': 3, 'validation': 1, 'test': 1}
  train = _examples(builder, 'train')
  assert [(int(ex['id']), int(ex['sentid'])) for ex in train] == [
      (0, 0), (0, 1), (1, 5)]
  grey = train[2]['image'].astype(int)  # an L-mode file comes out as RGB
  assert (grey[..., 0] == grey[..., 1]).all() and (grey[..., 1] ==
                                                   grey[..., 2]).all()
  (test,) = _examples(builder, 'test')
  assert int(test['id']) == 3 and test['captions'] == [
      'A man on a ladder.', 'A man fixes a window.']
  tokens = _examples(_built(data_dir, *flickr, caption_text='tokens',
                            captions='first'), 'train')
  assert [_text(ex) for ex in tokens] == ['two young guys',
                                          'workers look down']


def _bad_coco(root):
  """A COCO-style file with one image of each kind of fault."""
  path = _coco(root)
  data = json.loads(path.read_text())
  images = data['images']
  os.remove(root / images[1]['filepath'] / images[1]['filename'])
  damaged = root / images[3]['filepath'] / images[3]['filename']
  damaged.write_bytes(damaged.read_bytes()[:40])
  images[4]['sentences'] = []
  images[5]['split'] = 'dev'
  images.append({'filename': 7, 'split': ['train'], 'cocoid': 7})  # garbage
  images[6]['cocoid'] = 9  # image 0's
  path.write_text(json.dumps(data))
  return path


def test_bad_images_are_one_error_naming_each(data_dir, tmp_path):
  path = _bad_coco(tmp_path)
  with pytest.raises(errors.UserError) as e:
    _built(data_dir, path, tmp_path)
  message = str(e.value)
  assert '6 bad image(s)' in message and 'skip_bad_rows=True' in message
  assert 'images[1] train2014/COCO_train2014_000000000025.jpg (file not ' \
         'found)' in message
  assert 'images[3] val2014/COCO_val2014_000000000073.jpg (unreadable' in (
      message)
  assert 'images[4] val2014/COCO_val2014_000000000074.jpg (no sentences)' in (
      message)
  assert "(split 'dev' is not one of train, val, test, restval)" in message
  assert '(id 9 repeats images[0])' in message
  assert 'images[7] (no filename; split' in message
  assert 'images[0]' not in message.replace('repeats images[0]', '')


def test_skip_bad_rows_reports_them_and_builds_the_rest(data_dir, tmp_path,
                                                       capsys):
  path = _bad_coco(tmp_path)
  builder = _built(data_dir, path, tmp_path, skip_bad_rows=True)
  assert _counts(builder) == {'train': 5}  # images 0 and 2 (restval)
  with open(os.path.join(builder.data_dir, karpathy.REPORT)) as f:
    rows = [line.split('\t') for line in f.read().splitlines()]
  assert rows[0] == ['index', 'id', 'file', 'reason']
  assert [(r[0], r[1], r[2]) for r in rows[1:]] == [
      ('1', '25', 'train2014/COCO_train2014_000000000025.jpg'),
      ('3', '73', 'val2014/COCO_val2014_000000000073.jpg'),
      ('4', '74', 'val2014/COCO_val2014_000000000074.jpg'),
      ('5', '133', 'val2014/COCO_val2014_000000000133.jpg'),
      ('6', '9', 'val2014/COCO_val2014_000000000136.jpg'), ('7', '7', '')]
  reasons = [r[3] for r in rows[1:]]
  assert reasons[::2] == ['file not found', 'no sentences',
                          'id 9 repeats images[0]']
  assert reasons[1].startswith('unreadable (')
  assert reasons[3] == "split 'dev' is not one of train, val, test, restval"
  assert reasons[5] == ("no filename; split ['train'] is not one of train, "
                        "val, test, restval; no sentences")
  capsys.readouterr()
  pipeline.prepare(_builder(data_dir, path, tmp_path, skip_bad_rows=True))
  assert '6 bad image(s)' in capsys.readouterr().out  # said again


def test_a_changed_json_is_built_again(data_dir, tmp_path):
  path = _coco(tmp_path)
  assert _counts(_built(data_dir, path, tmp_path))['train'] == 7
  data = json.loads(path.read_text())
  data['images'][0]['sentences'] = data['images'][0]['sentences'][:1]
  path.write_text(json.dumps(data))
  os.utime(path, ns=(1, 1))  # a new time even on a coarse clock
  assert _counts(_built(data_dir, path, tmp_path))['train'] == 5


def test_bad_files_and_options_are_one_sentence(data_dir, coco, tmp_path):
  annotations, images = coco
  with pytest.raises(errors.UserError, match='annotations=FILE,images=DIR'):
    _builder(data_dir, tmp_path / 'none.json', images)
  with pytest.raises(errors.UserError, match='images_dir'):
    _builder(data_dir, annotations, tmp_path / 'none')
  with pytest.raises(errors.UserError, match="captions 'some' is not one of"):
    _builder(data_dir, annotations, images, captions='some')
  with pytest.raises(errors.UserError, match='caption_text'):
    _builder(data_dir, annotations, images, caption_text='words')
  with pytest.raises(errors.UserError, match='does not have; its fields are'):
    _builder(data_dir, annotations, images, restval=True)
  broken = tmp_path / 'broken.json'
  broken.write_text('{"images": [')
  with pytest.raises(errors.UserError, match='is not JSON'):
    _built(data_dir, broken, images)
  empty = tmp_path / 'empty.json'
  empty.write_text(json.dumps({'images': [], 'dataset': 'coco'}))
  with pytest.raises(errors.UserError, match='lists no usable image'):
    _built(data_dir, empty, images)
  other = tmp_path / 'other.json'
  other.write_text(json.dumps({'annotations': []}))
  with pytest.raises(errors.UserError, match='no top-level "images" list'):
    _built(data_dir, other, images)


def test_config_builds_a_two_tower_model():
  from mmfusion import build
  from mmfusion import tasks
  from mmfusion.configs import karpathy as config_lib
  for arg in ('', 'runlocal', 'annotations=a.json,images=b,captions=first',
              'loss=siglip,runlocal'):
    config = config_lib.get_config(arg)
    build.check_config(config)
    assert config.data.name == 'karpathy_captions/default'
    assert config.task.name == 'contrastive'
    assert config.best_metric == 'recall@1'
    task = tasks.make(config.task)
    assert tuple(map(tuple, task.towers)) == (('image',), ('text',))
  config = config_lib.get_config('annotations=a.json,images=b,captions=first')
  assert config.data.overrides['annotations'] == 'a.json'
  assert config.data.overrides['images_dir'] == 'b'
  assert config.data.overrides['captions'] == 'first'
  assert config_lib.get_config('loss=siglip').task.loss_fn == 'siglip'
  assert config_lib.get_config('runlocal').total_steps < 100
  for bad in ('video', 'captions=some', 'loss=mse', 'images='):
    with pytest.raises(ValueError, match='config arg'):
      config_lib.get_config(bad)


@pytest.mark.slow  # a whole run through the loop, checkpoints and eval
def test_the_config_trains_end_to_end_on_the_stand_in(coco, data_dir,
                                                      tmp_path):
  """Image <-> caption retrieval on the tiny COCO: trained a few steps and
  scored by recall over validation and test."""
  from mmfusion import train
  from mmfusion.configs import karpathy as config_lib
  annotations, images = coco
  config = config_lib.get_config(
      f'annotations={annotations},images={images},runlocal')
  config.data.data_dir = data_dir
  config.data.overrides = {**config.data.overrides, **TINY}
  config.batch_size, config.total_steps, config.num_devices = 2, 4, 1
  config.eval_every = config.checkpoint_every = 2
  config.optimizer.warmup_steps = 1
  results = train.train_and_evaluate(config, str(tmp_path / 'run'))
  assert results['step'] == 4
  for split in ('validation', 'test'):
    assert results[split]['examples'] == 2  # one per image
    assert np.isfinite(results[split]['median_rank'])
    # Two images: each is found first or second, so recall@5 is 1.
    assert 0.0 <= results[split]['recall@1'] <= 1.0
    assert results[split]['recall@5'] == 1.0
