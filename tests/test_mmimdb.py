"""The mmimdb builder, on tiny stand-ins of both layouts the authors publish:
the folder (split.json + dataset/<id>.json + .jpeg) and the HDF5 file (+
metadata.npy), each written here the way the authors' make_dataset.py does."""

import json
import os
import pickle

import h5py
import ml_collections
import numpy as np
import pytest
from PIL import Image

from mmfusion.runtime import errors
from mmfusion.data import info
from mmfusion.data import mmimdb
from mmfusion.data import pipeline
from mmfusion.data import tokenizer

TINY = {'image_size': 16, 'text_length': 80}
RED, BLUE, GREEN = (220, 30, 40), (30, 40, 220), (40, 200, 60)
# id -> (split, genres, plots, normalised longest plot, poster (w, h))
MOVIES = {
    '0000001': ('train', ['Drama', 'Comedy', 'News'],
                ["A man's 2 dogs.", "The Hero's 2 quests<br />(again)!"],
                "the hero ' s N quests ( again ) !", (160, 256)),
    '0000002': ('train', ['Sci-Fi'], ['Robots in 3000 AD: a sci-fi tale.'],
                'robots in N ad : a sci - fi tale .', (320, 512)),
    '0000003': ('train', ['Film-Noir', 'Crime'],
                ['Visit\nhttp://imdb.com/x page\nEnd.', 'Short.'],
                'visit L end .', (300, 300)),
    '0000004': ('train', ['Horror'], ['A_dark [house] #night'],
                'a dark house night', (100, 400)),
    '0000005': ('train', ['Drama', 'Romance'], ['Love, war; "peace".'],
                'love , war ; " peace " .', (160, 256)),
    '0000006': ('dev', ['Comedy'], ['Two friends.'], 'two friends .',
                (160, 256)),
    '0000007': ('dev', ['Western', 'Adult'], ['Cowboys ride.'],
                'cowboys ride .', (160, 256)),
    '0000008': ('test', ['Documentary'], ['Bees (1990).'],
                'bees ( N ) .', (160, 256)),
    '0000009': ('test', ['Animation', 'Family', 'Short'], ['Toys talk!'],
                'toys talk !', (160, 256)),
}
SPLIT_OF = {'train': 'train', 'dev': 'validation', 'test': 'test'}


@pytest.fixture(scope='module', autouse=True)
def registered():
  """The lead registers the builder in mmfusion.data.BUILDERS; until then
  the tests do, for get_builder and the training loop."""
  with pytest.MonkeyPatch.context() as mp:
    mp.setitem(pipeline.BUILDERS, 'mmimdb', mmimdb.MmImdb)
    yield


# ---------------------------------------------------- The published files ---
def _poster(path, size):
  """A JPEG whose left half is red and right half blue, with green bands
  where the authors' crop cuts (the sides of a wide one, the ends of a tall
  one)."""
  w, h = size
  rgb = np.zeros((h, w, 3), np.uint8)
  rgb[:, :w // 2], rgb[:, w // 2:] = RED, BLUE
  if w / 160 > h / 256:
    band = int((w - 160 * h / 256) / 2) - 8
    rgb[:, :band] = rgb[:, w - band:] = GREEN
  elif w / 160 < h / 256:
    band = int((h - 256 * w / 160) / 2) - 8
    rgb[:band] = rgb[h - band:] = GREEN
  Image.fromarray(rgb).save(path, quality=95)


def _folder(root, movies=MOVIES, extra_split=None):
  """root/mmimdb/{split.json, dataset/}, as mmimdb.tar.gz unpacks."""
  folder = root / 'mmimdb' / 'dataset'
  folder.mkdir(parents=True)
  split = {'train': [], 'dev': [], 'test': []}
  for ident, (s, genres, plots, _, size) in movies.items():
    split[s].append(ident)
    movie = {'title': f'Movie {ident}', 'year': 1999, 'genres': genres,
             'plot': plots, 'kind': 'movie', 'rating': 6.1}
    (folder / f'{ident}.json').write_text(json.dumps(movie, indent=4))
    _poster(folder / f'{ident}.jpeg', size)
  for s, ids in (extra_split or {}).items():
    split[s] += ids
  (root / 'mmimdb' / 'split.json').write_text(json.dumps(split))
  return root


def _vgg_cover(jpeg):
  """make_dataset.py's `cover` of a poster: cropped about its centre to
  160:256, resized to 160x256 (ANTIALIAS), BGR, minus VGG's means, CHW."""
  im = Image.open(jpeg)
  w, h = im.size
  wr, hr = w / 160, h / 256
  if hr > wr:
    box = (0, int(h / 2 - 256 * wr / 2), w, int(h / 2 + 256 * wr / 2))
  else:
    box = (int(w / 2 - 160 * hr / 2), 0, int(w / 2 + 160 * hr / 2), h)
  im = im.crop(box).resize((160, 256), Image.LANCZOS).convert('RGB')
  x = np.asarray(im, np.float32)[..., [2, 1, 0]]
  x -= np.asarray([103.939, 116.779, 123.68], np.float32)
  return x.transpose(2, 0, 1)


def _fuel_split(sizes, sources):
  """Fuel's H5PYDataset.create_split_array of {split: (start, stop)}."""
  dtype = np.dtype([('split', 'S5'), ('source', f'S{max(map(len, sources))}'),
                    ('start', np.int64), ('stop', np.int64),
                    ('indices', h5py.ref_dtype), ('available', np.bool_),
                    ('comment', 'S1')])
  rows = np.empty(len(sizes) * len(sources), dtype)
  for i, (split, source) in enumerate(
      (s, src) for s in sizes for src in sorted(sources)):
    rows[i] = (split.encode(), source.encode(), *sizes[split],
               h5py.Reference(), True, b'.')
  return rows


def _hdf5(root, jpegs, movies=MOVIES):
  """multimodal_imdb.hdf5 + metadata.npy of `movies` (rows train, dev,
  test), posters from the JPEG files `jpegs`."""
  order = [i for s in ('train', 'dev', 'test') for i in movies
           if movies[i][0] == s]
  words = ['_UNK_'] + sorted({w for i in order for w in movies[i][3].split()})
  ix = {w: k for k, w in enumerate(words)}
  np.save(root / 'metadata.npy', {
      'ix_to_word': dict(enumerate(words)), 'word_to_ix': ix,
      'vocab_size': len(words),
      'lookup': np.zeros((len(words), 300), np.float32)})
  n = len(order)
  path = root / 'multimodal_imdb.hdf5'
  with h5py.File(path, 'w') as f:
    f.create_dataset('features', (n, 300), dtype='float32')
    f.create_dataset('vgg_features', (n, 4096), dtype='float32')
    f.create_dataset('three_grams', (n, 7), dtype='float32')
    f.create_dataset('word_grams', (n, 5), dtype='float32')
    images = f.create_dataset('images', (n, 3, 256, 160), dtype='int32')
    seqs = f.create_dataset('sequences', (n,),
                            dtype=h5py.vlen_dtype(np.dtype('int32')))
    genres = f.create_dataset('genres', (n, 23), dtype='int32')
    ids = f.create_dataset('imdb_ids', (n,), dtype='S7')
    ids[...] = np.asarray(order, dtype='S7')
    for row, ident in enumerate(order):
      images[row] = _vgg_cover(jpegs / f'{ident}.jpeg')  # truncated to int
      seqs[row] = np.asarray([ix[w] for w in movies[ident][3].split()],
                             np.int32)
      genres[row] = [g in movies[ident][1] for g in mmimdb.GENRES]
    genres.attrs['target_names'] = json.dumps(list(mmimdb.GENRES))
    images.dims[0].label, images.dims[1].label = 'batch', 'channel'
    counts = [sum(movies[i][0] == s for i in order)
              for s in ('train', 'dev', 'test')]
    bounds = np.cumsum([0] + counts)
    f.attrs['split'] = _fuel_split(
        {s: (bounds[k], bounds[k + 1])
         for k, s in enumerate(('train', 'dev', 'test'))},
        ['features', 'genres', 'images', 'imdb_ids', 'sequences',
         'three_grams', 'vgg_features', 'word_grams'])
  return path


@pytest.fixture(scope='module')
def layouts(tmp_path_factory):
  """(folder root, HDF5 file) of the same movies."""
  root = _folder(tmp_path_factory.mktemp('mmimdb_folder'))
  hdf5 = _hdf5(tmp_path_factory.mktemp('mmimdb_hdf5'),
               root / 'mmimdb' / 'dataset')
  return root, hdf5


def _builder(data_dir, path, **overrides):
  return pipeline.get_builder(ml_collections.ConfigDict({
      'name': 'mmimdb/default', 'data_dir': data_dir,
      'overrides': {'path': str(path), **TINY, **overrides}}))


def _built(data_dir, path, **overrides):
  builder = _builder(data_dir, path, **overrides)
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


def _text(ex):
  return tokenizer.ByteTokenizer().decode(ex['text'])[0]


@pytest.fixture(scope='module')
def folder_built(data_dir, layouts):
  return _built(data_dir, layouts[0])


@pytest.fixture(scope='module')
def hdf5_built(data_dir, layouts):
  return _built(data_dir, layouts[1])


# ------------------------------------------------------------------ Tests ---
def test_shapes_labels_text_and_splits(folder_built):
  examples = _examples(folder_built)
  assert sorted(examples) == sorted(MOVIES)
  sizes = {s: folder_built.info.splits[s].num_examples
           for s in folder_built.info.splits}
  assert sizes == {'train': 5, 'validation': 2, 'test': 2}
  for ident, (split, genres, _, plot, _) in MOVIES.items():
    ex = examples[ident]
    assert ex['split'] == SPLIT_OF[split]
    assert ex['image'].shape == (16, 16, 3) and ex['image'].dtype == np.uint8
    assert ex['text'].shape == (80,) and ex['text'].dtype == np.int32
    assert ex['labels'].shape == (23,) and ex['labels'].dtype == np.bool_
    # News and Adult are not among the 23: dropped, as the authors do.
    assert [mmimdb.GENRES[k] for k in np.flatnonzero(ex['labels'])] == [
        g for g in mmimdb.GENRES if g in genres]
    assert _text(ex) == plot
    assert ex['present'] == {'image': True, 'text': True}
  assert examples['0000001']['labels'][:3].tolist() == [True, True, False]
  assert info.targets_of(folder_built)['labels']['names'] == list(
      mmimdb.GENRES)
  batch = next(pipeline.eval_batches(
      folder_built.as_data_source(split='train'), batch_size=4,
      modalities=('image', 'text'), targets=('labels',)))
  assert batch['labels'].dtype == np.float32 and batch['labels'].shape == (
      4, 23)
  assert batch['present/text'].dtype == np.bool_


def test_both_layouts_give_the_same_examples(folder_built, hdf5_built):
  a, b = _examples(folder_built), _examples(hdf5_built)
  assert sorted(a) == sorted(b) == sorted(MOVIES)
  for ident in a:
    assert a[ident]['split'] == b[ident]['split'], ident
    np.testing.assert_array_equal(a[ident]['labels'], b[ident]['labels'])
    np.testing.assert_array_equal(a[ident]['text'], b[ident]['text'])
    assert a[ident]['present'] == b[ident]['present']
    # The HDF5 truncated its mean-subtracted pixels: a level or two apart.
    diff = np.abs(a[ident]['image'].astype(int) - b[ident]['image'])
    assert diff.max() <= 2 and diff.mean() < 0.5, ident


def test_posters_are_rgb_cropped_as_the_authors_and_padded(hdf5_built,
                                                            folder_built):
  for built in (folder_built, hdf5_built):
    for ident, ex in _examples(built).items():
      im = ex['image'].astype(int)
      # 160x256 padded to 256x256: black bars of 48/256 of the width.
      assert (im[:, :2] <= 10).all() and (im[:, -2:] <= 10).all(), ident
      left, right = im[4:12, 4:7], im[4:12, 9:12]
      assert (left[..., 0] > 150).all() and (left[..., 2] < 100).all(), ident
      assert (right[..., 2] > 150).all() and (right[..., 0] < 100).all(), (
          ident)
      assert (im[..., 1] < 120).all(), ident  # no green: the crop cut it


def test_image_fit_and_hdf5_pixels_decode():
  poster = np.zeros((256, 160, 3), np.uint8)
  poster[:48] = 255  # a white band at the top: outside the centre square
  assert mmimdb.fit_square(poster, 8, 'crop').max() == 0
  stretched = mmimdb.fit_square(poster, 8, 'stretch')
  assert stretched.shape == (8, 8, 3) and (stretched[0] > 240).all()
  padded = mmimdb.fit_square(poster, 16, 'pad')
  assert (padded[:, 0] <= 2).all() and (padded[0, 8] > 240).all()
  # make_dataset.py's float BGR minus mean, truncated to int32 by h5py.
  p_256 = np.arange(256)
  rgb_1x256x3 = np.stack([p_256, p_256, p_256], -1)[None].astype(np.uint8)
  bgr = rgb_1x256x3[..., ::-1].astype(np.float32) - np.float32(
      mmimdb.VGG_MEAN_BGR)
  cover_3x1x256 = np.trunc(bgr).astype(np.int32).transpose(2, 0, 1)
  back = mmimdb.vgg_to_rgb(cover_3x1x256)
  assert back.shape == (1, 256, 3)
  for c, mean in zip((2, 1, 0), mmimdb.VGG_MEAN_BGR):  # RGB channel, its mean
    wrong = np.flatnonzero(back[0, :, c] != p_256)
    assert wrong.tolist() == [int(mean)], c  # only the mean's floor


def test_normalize_plot_and_longest_plot():
  assert mmimdb.normalize_plot("It's 1999 -- <br />A_b [c]!") == (
      "it ' s N - - a b c !")
  assert mmimdb.normalize_plot('Go\nhttps://x.org/a b\nNow') == 'go L now'
  assert mmimdb.normalize_plot('  ~*  ') == ''
  assert mmimdb.longest_plot(['ab', 'abcd', 'wxyz']) == 'abcd'
  assert mmimdb.longest_plot('one') == 'one'
  assert mmimdb.longest_plot([]) == ''


def test_progress_is_shown_while_building(data_dir, layouts, capsys):
  _built(data_dir, layouts[0], image_size=8)
  out = capsys.readouterr().out
  assert '9/9 movies read' in out and 'Building mmimdb/' in out


BAD = {  # id -> what is wrong with it (on top of the good movies)
    '9000001': 'no JSON file', '9000002': 'JSON that is not JSON',
    '9000003': 'no poster', '9000004': 'a misspelt genre',
    '9000005': 'an empty plot', '9000006': 'only a genre not of the 23',
    '9000007': 'a truncated poster'}


def _bad_folder(root, decode_only=False):
  movies = dict(MOVIES)
  bad = {k: ('train', ['Drama'], ['Fine plot.'], 'fine plot .', (160, 256))
         for k in BAD}
  bad['9000004'] = ('train', ['Comdy'], ['Fine plot.'], '', (160, 256))
  bad['9000005'] = ('dev', ['Drama'], [''], '', (160, 256))
  bad['9000006'] = ('test', ['News'], ['Fine plot.'], '', (160, 256))
  if decode_only:
    bad = {'9000007': bad['9000007']}
  _folder(root, {**movies, **bad},
          extra_split=None if decode_only else {'test': ['0000001']})
  folder = root / 'mmimdb' / 'dataset'
  jpeg = folder / '9000007.jpeg'
  jpeg.write_bytes(jpeg.read_bytes()[:400])
  if not decode_only:
    (folder / '9000001.json').unlink()
    (folder / '9000002.json').write_text('{"plot": [')
    (folder / '9000003.jpeg').unlink()
  return root


def test_bad_movies_are_one_error_listing_each(tmp_path, data_dir):
  root = _bad_folder(tmp_path / 'bad')
  with pytest.raises(errors.UserError) as e:
    _built(data_dir, root)
  message = str(e.value)
  assert 'has 7 bad movie(s)' in message and 'skip_bad_rows' in message
  for ident, why in {'9000001': 'dataset/9000001.json: file not found',
                     '9000002': 'dataset/9000002.json: unreadable',
                     '9000003': 'no poster dataset/9000003.jpeg',
                     '9000004': "genre 'Comdy' is not an IMDb genre",
                     '9000005': 'empty plot',
                     '9000006': 'none of the 23 genres (only News)',
                     '0000001': 'listed in split.json under train and '
                                'test'}.items():
    assert f'{ident} ({why}' in message, ident
  assert '9000007' not in message  # decoded later: listed once those pass


def test_a_poster_that_fails_to_decode_is_named_after_the_pass(tmp_path,
                                                               data_dir):
  root = _bad_folder(tmp_path / 'decode', decode_only=True)
  with pytest.raises(errors.UserError,
                     match=r'1 bad movie\(s\): 9000007 \(poster '
                     r'dataset/9000007.jpeg: unreadable'):
    _built(data_dir, root)


def test_skipped_movies_are_reported_and_missing_ones_absent(
    tmp_path, data_dir, capsys):
  root = _bad_folder(tmp_path / 'skip')
  builder = _built(data_dir, root, skip_bad_rows=True, allow_missing=True)
  examples = _examples(builder)
  # allow_missing: the poster-less and the plot-less movie are in, absent.
  assert sorted(examples) == sorted([*MOVIES, '9000003', '9000005'])
  no_poster, no_plot = examples['9000003'], examples['9000005']
  assert no_poster['present'] == {'image': False, 'text': True}
  assert not no_poster['image'].any() and _text(no_poster) == 'fine plot .'
  assert no_plot['present'] == {'image': True, 'text': False}
  assert not no_plot['text'].any() and no_plot['split'] == 'validation'
  with open(os.path.join(builder.data_dir, mmimdb.REPORT)) as f:
    rows = [r.split('\t') for r in f.read().splitlines()]
  assert rows[0] == ['id', 'split', 'reason']
  assert sorted((i, s) for i, s, _ in rows[1:]) == [
      ('0000001', 'test'), ('9000001', 'train'), ('9000002', 'train'),
      ('9000004', 'train'), ('9000006', 'test'), ('9000007', 'train')]
  assert 'unreadable' in dict((i, w) for i, _, w in rows[1:])['9000007']
  assert '6 bad MM-IMDb movie(s) were skipped' in capsys.readouterr().out
  pipeline.prepare(_builder(data_dir, root, skip_bad_rows=True,
                            allow_missing=True))  # built: said again
  assert '6 bad MM-IMDb movie(s)' in capsys.readouterr().out


def test_bad_hdf5_rows_are_listed(tmp_path, layouts):
  movies = {k: MOVIES[k] for k in ('0000001', '0000006', '0000008')}
  path = _hdf5(tmp_path, layouts[0] / 'mmimdb' / 'dataset', movies)
  with h5py.File(path, 'r+') as f:
    f['sequences'][1] = np.zeros(0, np.int32)  # 0000006: no plot
    f['genres'][2] = 0  # 0000008: no genre
  good, bad = mmimdb.scan_hdf5(str(path), '', allow_missing=False)
  assert [m.id for m in good] == ['0000001']
  assert good[0].text == MOVIES['0000001'][3] and good[0].poster == 0
  assert bad == [('0000006', 'validation', 'empty plot'),
                 ('0000008', 'test', 'none of the 23 genres')]


def test_hdf5_genre_columns_follow_target_names(tmp_path, layouts):
  movies = {k: MOVIES[k] for k in ('0000001', '0000009')}
  path = _hdf5(tmp_path, layouts[0] / 'mmimdb' / 'dataset', movies)
  with h5py.File(path, 'r+') as f:  # the same genres, columns reversed
    f['genres'][...] = f['genres'][...][:, ::-1]
    f['genres'].attrs['target_names'] = json.dumps(list(mmimdb.GENRES[::-1]))
  good, _ = mmimdb.scan_hdf5(str(path), '', allow_missing=False)
  assert {mmimdb.GENRES[k] for k in np.flatnonzero(good[1].labels)} == {
      'Animation', 'Family', 'Short'}
  assert {mmimdb.GENRES[k] for k in np.flatnonzero(good[0].labels)} == {
      'Drama', 'Comedy'}


def test_missing_files_and_bad_configs_are_one_sentence(tmp_path, data_dir,
                                                        layouts):
  with pytest.raises(errors.UserError, match='archive.org.*mmimdb.tar.gz'):
    _builder(data_dir, tmp_path / 'nothing')
  (tmp_path / 'half' / 'dataset').mkdir(parents=True)
  with pytest.raises(errors.UserError, match='no split.json'):
    _builder(data_dir, tmp_path / 'half')
  (tmp_path / 'notes.txt').write_text('hi')
  with pytest.raises(errors.UserError, match='neither'):
    _builder(data_dir, tmp_path / 'notes.txt')
  with pytest.raises(errors.UserError, match="image_fit 'square'"):
    _builder(data_dir, layouts[0], image_fit='square')
  with pytest.raises(errors.UserError, match='data.overrides has'):
    _builder(data_dir, layouts[0], poster_size=3)
  lone = tmp_path / 'lone'
  lone.mkdir()
  os.link(layouts[1], lone / 'multimodal_imdb.hdf5')
  with pytest.raises(errors.UserError, match='needs metadata.npy'):
    mmimdb.scan_hdf5(str(lone / 'multimodal_imdb.hdf5'), '', False)


def test_metadata_pickle_may_hold_arrays_but_no_code(tmp_path, layouts):
  words = mmimdb.read_vocabulary(str(layouts[1].parent / 'metadata.npy'))
  assert words[0] == '_UNK_' and 'quests' in words
  ran = tmp_path / 'ran'

  class Evil:
    def __reduce__(self):
      return (os.mkdir, (str(ran),))

  evil = tmp_path / 'evil.npy'
  with open(evil, 'wb') as f:
    np.lib.format.write_array_header_1_0(
        f, {'descr': '|O', 'fortran_order': False, 'shape': ()})
    pickle.dump({'ix_to_word': {0: Evil()}}, f)
  with pytest.raises(errors.UserError, match='not MM-IMDb.s metadata.npy'):
    mmimdb.read_vocabulary(str(evil))
  assert not ran.exists()


def test_config_builds_a_model():
  from mmfusion import build
  from mmfusion import models
  from mmfusion.configs import mmimdb as config_lib
  for arg in ('', 'runlocal', 'image', 'text,runlocal', 'image+text,balanced'):
    config = config_lib.get_config(arg)
    build.check_config(config)
    assert config.data.name == 'mmimdb/default'
    assert config.task.name == 'multilabel' and config.best_metric == 'map'
    model = models.from_config(config.model, num_outputs=23)
    assert set(model.encoders) == set(config.data.modalities)
  assert config_lib.get_config('text').data.modalities == ('text',)
  assert config_lib.get_config('balanced').task.class_balanced
  assert config_lib.get_config('path=/x/y.hdf5').data.overrides['path'] == (
      '/x/y.hdf5')
  assert config_lib.get_config('runlocal').total_steps < 100
  with pytest.raises(ValueError, match='config arg'):
    config_lib.get_config('audio')


@pytest.mark.slow  # a whole run through the loop, checkpoints and load
def test_the_config_trains_end_to_end_on_the_stand_in(layouts, data_dir,
                                                      tmp_path):
  """Poster + plot, multilabel over 23 genres: trained a few steps,
  evaluated, loaded back; a probability per genre for every test movie."""
  import mmfusion
  from mmfusion import train
  from mmfusion.configs import mmimdb as config_lib
  config = config_lib.get_config(f'runlocal,path={layouts[0]}')
  config.data.data_dir = data_dir
  config.data.overrides = {**config.data.overrides, **TINY}
  config.batch_size, config.total_steps, config.num_devices = 2, 4, 1
  config.eval_every = config.checkpoint_every = 2
  config.optimizer.warmup_steps = 1
  workdir = str(tmp_path / 'run')
  results = train.train_and_evaluate(config, workdir)
  assert results['step'] == 4 and np.isfinite(results['test']['loss'])
  assert 0 <= results['test']['map'] <= 1
  model = mmfusion.load(workdir)
  builder = pipeline.get_builder(config.data)
  batch = next(pipeline.eval_batches(
      builder.as_data_source(split='test'), batch_size=2,
      modalities=config.data.modalities, targets=('labels',)))
  probs = np.asarray(model.apply_batch(batch)['probabilities'])
  assert probs.shape == (2, 23)
  assert ((probs > 0) & (probs < 1)).all()
