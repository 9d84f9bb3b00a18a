"""`mmimdb`: MM-IMDb (Arevalo et al. 2017), posters and plots, 23 genres.

25,959 movies crawled from IMDb, each with its poster, its plot and any of
23 genres (multi-hot, for the `multilabel` task), as the authors distribute
them (https://github.com/johnarevalo/gmu-mmimdb: its code is under the MIT
licence, which states no other terms for the data; the posters and plots are
IMDb's). Nothing downloads at run time; get one of the two layouts once
(archive.org mirrors of the authors' links):

  mmimdb.tar.gz           https://archive.org/download/mmimdb/mmimdb.tar.gz
                          unpacks to mmimdb/split.json + mmimdb/dataset/
  multimodal_imdb.hdf5    .../mmimdb/multimodal_imdb.hdf5 (the same folder)
  + metadata.npy          .../mmimdb/metadata.npy
                          (the vocabulary of the HDF5's plots), side by side

and point `data.overrides.path` at it (default DEFAULT_DIR); the layout is
told from the path:
  folder  `split.json` ({"train": [ids], "dev": [ids], "test": [ids]}) and
          `dataset/<id>.json` (IMDb's fields; `plot`: a list of texts,
          `genres`: a list of names) + `dataset/<id>.jpeg` (the poster), in
          the folder given or in its `mmimdb/`
  hdf5    `multimodal_imdb.hdf5` (the file, or a folder holding it), as the
          authors' make_dataset.py writes it: `images` int32 [N, 3, 256, 160]
          (the poster cropped to 160x256 keeping its aspect, channels BGR
          minus VGG's ImageNet means, CHW), `sequences` vlen int32 (the plot
          as ids of metadata.npy's `ix_to_word`), `genres` int32 [N, 23]
          (columns named by its `target_names` attribute), `imdb_ids` S7;
          train/dev/test are the row ranges of Fuel's `split` attribute.
          metadata.npy is a pickle: it is read by an unpickler that admits
          numpy arrays and nothing else.

Both layouts give the same examples: the plot is the longest of a movie's
plots, normalised as make_dataset.py does (`normalize_plot`: lower case,
digits `N`, punctuation split off, words joined by spaces), and the poster
is cropped and resized to 160x256 as make_dataset.py does (LANCZOS; large
JPEGs are first decoded at a reduced scale instead of its NEAREST
pre-shrink), then the HDF5's BGR mean-subtracted pixels are turned back
into RGB (the file truncated them to integers; off by at most one level).
Features:
  image    uint8 [S, S, 3] RGB: the 160x256 poster padded with black to a
           square (`image_fit='pad'`), centre-cropped ('crop') or squashed
           ('stretch'), resized with LANCZOS to `image_size`
  text     int32 [L]: the plot's tokens (`text_tokenizer`: 'bytes' or a BERT
           checkpoint, as tuxpaint's), cut to `text_length`
  labels   bool [23], multi-hot in GENRES' order (by frequency, the HDF5's);
           `target_names()` names them. IMDb's other genres (DROPPED_GENRES:
           News on 64 movies, Adult 4, ...) are left out, as the authors do
  present  {image, text}: False only where `allow_missing` let a movie
           without a poster or plot in (its array is then zeros)
  id       the IMDb id ('0000008')
Splits: train/validation/test are the authors' train/dev/test (15,552 /
2,608 / 7,799 movies).

Bad movies (JSON or poster missing or unreadable, no plot, no genre of the
23, a genre IMDb does not have, an id in two splits; in the HDF5 an empty
plot, a word id past the vocabulary, no genre) stop the build with one
UserError listing each id and reason. With `skip_bad_rows=True` they are
left out, listed in `skipped_movies.tsv` in the dataset's folder and counted
on stdout at every prepare. Missing files and bad JSON are found before any
poster is decoded; posters that fail to decode, at the end of the pass.
"""

import contextlib
import dataclasses
import functools
import json
import os
import pickle
import re

import numpy as np
import tensorflow_datasets as tfds

from mmfusion.runtime import errors
from mmfusion.runtime import progress
from mmfusion.data import manifest
from mmfusion.data import tokenizer

DEFAULT_DIR = '~/.cache/mmfusion/mmimdb'  # where mmimdb.tar.gz is unpacked
HDF5 = 'multimodal_imdb.hdf5'
METADATA = 'metadata.npy'
SPLIT_FILE = 'split.json'
REPORT = 'skipped_movies.tsv'
# The authors' split names -> TFDS's.
SPLITS = {'train': 'train', 'dev': 'validation', 'test': 'test'}
# The 23 genres of the HDF5's `target_names`: those on 338+ movies, by count.
GENRES = ('Drama', 'Comedy', 'Romance', 'Thriller', 'Crime', 'Action',
          'Adventure', 'Horror', 'Documentary', 'Mystery', 'Sci-Fi',
          'Fantasy', 'Family', 'Biography', 'War', 'History', 'Music',
          'Animation', 'Musical', 'Western', 'Sport', 'Short', 'Film-Noir')
# IMDb genres on too few movies to be classes (News 64, Adult 4, ...).
DROPPED_GENRES = ('News', 'Adult', 'Talk-Show', 'Reality-TV', 'Game-Show')
POSTER_WxH = (160, 256)  # make_dataset.py's img_size
VGG_MEAN_BGR = (103.939, 116.779, 123.68)  # subtracted in the HDF5's images
FITS = ('pad', 'crop', 'stretch')
MODALITIES = ('image', 'text')


# ------------------------------------------------------------------ Layout ---
def find_layout(path: str) -> tuple[str, str]:
  """('folder', the folder holding split.json) or ('hdf5', the .hdf5 file)
  at `path`; a UserError saying how to get MM-IMDb when it is not there."""
  path = os.path.expanduser(path)
  if os.path.isfile(path):
    if path.lower().endswith(('.hdf5', '.h5')):
      return 'hdf5', path
    if os.path.basename(path) == SPLIT_FILE:
      return 'folder', os.path.dirname(path)
    raise errors.UserError(
        f'{path!r} is neither MM-IMDb\'s {HDF5} nor its {SPLIT_FILE}; set '
        f'data.overrides.path to one of them or to the folder holding it.')
  for root in (path, os.path.join(path, 'mmimdb')):
    if os.path.isfile(os.path.join(root, SPLIT_FILE)):
      return 'folder', root
  if os.path.isfile(os.path.join(path, HDF5)):
    return 'hdf5', os.path.join(path, HDF5)
  if os.path.isdir(os.path.join(path, 'dataset')):
    raise errors.UserError(
        f'{path!r} has a dataset/ folder but no {SPLIT_FILE} beside it; '
        f'unpack the whole mmimdb.tar.gz (it holds both).')
  raise errors.UserError(
      f'{path!r} holds no MM-IMDb ({SPLIT_FILE} + dataset/, or {HDF5}); '
      f'download https://archive.org/download/mmimdb/mmimdb.tar.gz and '
      f'unpack it into {DEFAULT_DIR} (tar xzf), or set data.overrides.path '
      f'to your copy.')


# ------------------------------------------------------------------- Plots ---
# make_dataset.py's normalizeText, in order: line breaks, URLs at a line's
# start, stray symbols, numbers, then punctuation made words of their own.
_PLOT_RULES = (
    (re.compile(r'<br />'), ' '),
    (re.compile(r'^https?:\/\/.*[\r\n]*', re.MULTILINE), ' L '),
    (re.compile(r'[\~\*\+\^`_#\[\]|]'), ' '),
    (re.compile(r'[0-9]+'), ' N '),
    (re.compile(r'([/\'\-\.?!\(\)",:;])'), r' \1 '),
)


def normalize_plot(text: str) -> str:
  """A plot as the HDF5 holds it: lower case, numbers `N`, punctuation split
  off, its words joined by single spaces ('' when none is left)."""
  text = text.lower()
  for pattern, repl in _PLOT_RULES:
    text = pattern.sub(repl, text).strip()
  return ' '.join(text.split())


def longest_plot(plots) -> str:
  """The longest of a movie's plots (the first of equals), as the authors
  pick it; a lone string is its own longest."""
  if isinstance(plots, str):
    return plots
  texts = [p for p in plots if isinstance(p, str)] if isinstance(
      plots, list) else []
  return max(texts, key=len) if texts else ''


# ------------------------------------------------------------------ Genres ---
def multi_hot(genres) -> tuple[np.ndarray, list[str]]:
  """(bool [23] in GENRES' order, problems) of a movie's genre names."""
  labels_C = np.zeros(len(GENRES), np.bool_)
  if not isinstance(genres, list) or not genres:
    return labels_C, ['no genres']
  unknown = [g for g in genres if g not in GENRES and g not in DROPPED_GENRES]
  for g in genres:
    if g in GENRES:
      labels_C[GENRES.index(g)] = True
  problems = [f'genre {g!r} is not an IMDb genre' for g in unknown]
  if not labels_C.any() and not unknown:
    problems.append(f'none of the 23 genres (only {", ".join(genres)})')
  return labels_C, problems


# ----------------------------------------------------------------- Posters ---
def authors_crop(im):
  """A PIL image cropped about its centre to 160:256 and resized to 160x256
  with LANCZOS, as make_dataset.py's resize_and_crop_image does."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  w, h = im.size
  box_w, box_h = POSTER_WxH
  w_ratio, h_ratio = w / box_w, h / box_h
  if h_ratio > w_ratio:  # taller than 5:8: keep the middle rows
    keep = box_h * w_ratio
    box = (0, int(h / 2 - keep / 2), w, int(h / 2 + keep / 2))
  else:
    keep = box_w * h_ratio
    box = (int(w / 2 - keep / 2), 0, int(w / 2 + keep / 2), h)
  return im.crop(box).resize(POSTER_WxH, Image.LANCZOS)


def read_poster(path: str) -> np.ndarray:
  """uint8 [256, 160, 3] RGB of a poster file (`authors_crop`); a MediaError
  when it is missing or cannot be decoded."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  if not os.path.isfile(path):
    raise manifest.MediaError('file not found')
  limit = Image.MAX_IMAGE_PIXELS
  Image.MAX_IMAGE_PIXELS = None  # full-size covers can be huge, not bombs
  try:
    with Image.open(path) as im:
      # JPEGs decode at 1/2, 1/4 or 1/8 scale while >= twice the box.
      im.draft('RGB', (2 * POSTER_WxH[0], 2 * POSTER_WxH[1]))
      rgb = im.convert('RGB')
  except (OSError, ValueError, SyntaxError, EOFError) as e:
    raise manifest.MediaError(f'unreadable ({e})') from None
  finally:
    Image.MAX_IMAGE_PIXELS = limit
  return np.asarray(authors_crop(rgb), np.uint8)


def vgg_to_rgb(cover_3xHxW) -> np.ndarray:
  """uint8 [H, W, 3] RGB of one HDF5 `images` row: BGR minus VGG_MEAN_BGR,
  truncated toward zero. Exact but for one value per channel (the mean's
  floor reads back as its ceiling)."""
  s_3xHxW = np.asarray(cover_3xHxW, np.int64)
  mean_3x1x1 = np.asarray(VGG_MEAN_BGR)[:, None, None]
  p_3xHxW = s_3xHxW + np.where(s_3xHxW < 0, np.floor(mean_3x1x1),
                               np.ceil(mean_3x1x1))
  bgr_3xHxW = np.clip(p_3xHxW, 0, 255).astype(np.uint8)
  return np.ascontiguousarray(bgr_3xHxW[::-1].transpose(1, 2, 0))


def fit_square(poster_HxWx3, size: int, fit: str) -> np.ndarray:
  """uint8 [size, size, 3] of a poster: padded with black to a square
  ('pad'), its centre square ('crop') or squashed ('stretch'); LANCZOS."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  im = Image.fromarray(np.asarray(poster_HxWx3, np.uint8))
  w, h = im.size
  if fit == 'pad':
    side = max(w, h)
    canvas = Image.new('RGB', (side, side))
    canvas.paste(im, ((side - w) // 2, (side - h) // 2))
    im = canvas
  elif fit == 'crop':
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    im = im.crop((left, top, left + side, top + side))
  return np.asarray(im.resize((size, size), Image.LANCZOS), np.uint8)


# ------------------------------------------------------------------ Movies ---
@dataclasses.dataclass(frozen=True, eq=False)
class Movie:
  """One movie to build: its id, split, normalised plot ('' for none),
  labels [23] and where its poster is (a file path, or an HDF5 row)."""
  id: str
  split: str
  text: str
  labels: np.ndarray
  poster: str | int | None


def _read_json(path: str):
  """(the JSON object of a movie's file, or None, and the problem)."""
  if not os.path.isfile(path):
    return None, 'file not found'
  try:
    with open(path, encoding='utf-8') as f:
      data = json.load(f)
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
    return None, f'unreadable ({e})'
  if not isinstance(data, dict):
    return None, 'not a JSON object'
  return data, ''


def read_split_file(root: str) -> dict[str, list[str]]:
  """{TFDS split: [ids]} of a folder's split.json; a UserError when it is
  not the authors' {"train": [...], "dev": [...], "test": [...]}."""
  path = os.path.join(root, SPLIT_FILE)
  try:
    with open(path, encoding='utf-8') as f:
      data = json.load(f)
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
    raise errors.UserError(f'cannot read {path!r} ({e}); unpack '
                           f'mmimdb.tar.gz again.') from None
  if not isinstance(data, dict) or not all(
      isinstance(data.get(k), list) for k in SPLITS):
    raise errors.UserError(
        f'{path!r} is not MM-IMDb\'s split file: it must hold the lists '
        f'"train", "dev" and "test" of movie ids; unpack mmimdb.tar.gz again.')
  return {SPLITS[k]: [str(i) for i in data[k]] for k in SPLITS}


def scan_folder(root: str, allow_missing: bool):
  """([Movie], [(id, split, reason)] of bad ones) of the folder layout, from
  its JSON files and which posters exist (none is decoded here)."""
  movies, bad, seen = [], [], {}
  folder = os.path.join(root, 'dataset')
  for split, ids in read_split_file(root).items():
    for ident in ids:
      if ident in seen:
        bad.append((ident, split, f'listed in {SPLIT_FILE} under '
                    f'{seen[ident]} and {split}'))
        continue
      seen[ident] = split
      data, problem = _read_json(os.path.join(folder, f'{ident}.json'))
      if data is None:
        bad.append((ident, split, f'dataset/{ident}.json: {problem}'))
        continue
      text = normalize_plot(longest_plot(data.get('plot', [])))
      labels_C, problems = multi_hot(data.get('genres'))
      if not text and not allow_missing:
        problems.append('no plot' if 'plot' not in data else 'empty plot')
      poster = os.path.join(folder, f'{ident}.jpeg')
      if not os.path.isfile(poster):
        poster = None
        if not allow_missing:
          problems.append(f'no poster dataset/{ident}.jpeg')
      if problems:
        bad.append((ident, split, '; '.join(problems)))
      else:
        movies.append(Movie(ident, split, text, labels_C, poster))
  return movies, bad


# A pickle may name any function; metadata.npy's needs only these.
_NUMPY_GLOBALS = {
    ('numpy._core.multiarray', '_reconstruct'), ('numpy', 'ndarray'),
    ('numpy', 'dtype'), ('numpy._core.multiarray', 'scalar'),
    ('numpy._core.numeric', '_frombuffer'), ('_codecs', 'encode')}


class _NumpyUnpickler(pickle.Unpickler):
  """Unpickles dicts, lists, numbers, strings and numpy arrays only."""

  def find_class(self, module, name):
    if module.startswith('numpy.core'):  # pickled by numpy 1.x
      module = 'numpy._core' + module[len('numpy.core'):]
    if (module, name) not in _NUMPY_GLOBALS:
      raise pickle.UnpicklingError(f'{module}.{name} is not allowed here')
    return super().find_class(module, name)


def read_vocabulary(path: str) -> list[str]:
  """The words of metadata.npy's `ix_to_word`, by id; a UserError when the
  file is missing or not the authors' metadata."""
  if not os.path.isfile(path):
    raise errors.UserError(
        f'the HDF5 layout needs {METADATA} beside it (the words of its '
        f'plots) and {path!r} is missing; download '
        f'https://archive.org/download/mmimdb/{METADATA} there.')
  try:
    with open(path, 'rb') as f:
      version = np.lib.format.read_magic(f)
      read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                     else np.lib.format.read_array_header_2_0)
      read_header(f)
      meta = _NumpyUnpickler(f).load()
    meta = meta.item() if isinstance(meta, np.ndarray) else meta
    ix_to_word = meta['ix_to_word']
    return [str(ix_to_word[i]) for i in range(len(ix_to_word))]
  except (OSError, ValueError, EOFError, KeyError, TypeError, AttributeError,
          pickle.UnpicklingError) as e:
    raise errors.UserError(
        f'{path!r} is not MM-IMDb\'s {METADATA} ({e}); download it again from '
        f'https://archive.org/download/mmimdb/{METADATA}.') from None


def _hdf5_splits(f, path: str) -> dict[str, tuple[int, int]]:
  """{TFDS split: (start, stop)} of the rows, from Fuel's `split` attribute."""
  ranges = {}
  for row in f.attrs.get('split', ()):
    split = row['split'].decode() if isinstance(row['split'], bytes) else (
        str(row['split']))
    if split in SPLITS and row['available']:
      ranges[SPLITS[split]] = (int(row['start']), int(row['stop']))
  if set(ranges) != set(SPLITS.values()):
    raise errors.UserError(
        f'{path!r} has no train, dev and test rows in its `split` attribute; '
        f'it is not the authors\' {HDF5}: download it again.')
  return ranges


def _genre_columns(f, path: str) -> list[int]:
  """The `genres` column of each of GENRES, by its `target_names`."""
  names = json.loads(f['genres'].attrs.get('target_names', '[]'))
  missing = [g for g in GENRES if g not in names]
  if missing:
    raise errors.UserError(
        f'the genres of {path!r} ({", ".join(names) or "unnamed"}) lack '
        f'{", ".join(missing)}; use the authors\' {HDF5} (23 genres).')
  return [names.index(g) for g in GENRES]


def scan_hdf5(path: str, metadata: str, allow_missing: bool):
  """([Movie], [(id, split, reason)] of bad ones) of the HDF5 layout, from
  every dataset but `images`."""
  import h5py  # pylint: disable=g-import-not-at-top
  try:
    f = h5py.File(path, 'r')
  except OSError as e:
    raise errors.UserError(f'cannot open {path!r} ({e}); download '
                           f'{HDF5} again.') from None
  with f:
    absent = [k for k in ('images', 'sequences', 'genres', 'imdb_ids')
              if k not in f]
    if absent or f['images'].ndim != 4 or f['images'].shape[1] != 3:
      raise errors.UserError(
          f'{path!r} is not the authors\' {HDF5} (it lacks '
          f'{", ".join(absent) or "images [N, 3, H, W]"}); download it again.')
    ranges = _hdf5_splits(f, path)
    labels_NxC = f['genres'][...][:, _genre_columns(f, path)] > 0
    ids = [i.decode() for i in f['imdb_ids'][...]]
    sequences = f['sequences'][...]
  vocab = read_vocabulary(metadata or os.path.join(os.path.dirname(path),
                                                   METADATA))
  movies, bad = [], []
  for split, (start, stop) in ranges.items():
    for row in range(start, stop):
      seq = np.asarray(sequences[row], np.int64)
      problems = []
      if (seq >= len(vocab)).any() or (seq < 0).any():
        problems.append(f'word id {int(seq.max())} is past the '
                        f'{len(vocab):,} words of {METADATA}')
      elif not len(seq) and not allow_missing:
        problems.append('empty plot')
      if not labels_NxC[row].any():
        problems.append('none of the 23 genres')
      if problems:
        bad.append((ids[row], split, '; '.join(problems)))
        continue
      text = ' '.join(vocab[i] for i in seq)
      movies.append(Movie(ids[row], split, text, labels_NxC[row], row))
  return movies, bad


# ----------------------------------------------------------------- Builder ---
@dataclasses.dataclass(eq=False)
class MmImdbConfig(tfds.core.BuilderConfig):
  """Where MM-IMDb is and what shapes its examples take."""
  path: str = DEFAULT_DIR  # the folder or the .hdf5 (see `find_layout`)
  metadata: str = ''  # '': metadata.npy beside the .hdf5
  image_size: int = 64
  image_fit: str = 'pad'  # the 5:8 poster to a square: pad, crop, stretch
  text_length: int = 256  # tokens; longer plots are cut
  # 'bytes', or a BERT checkpoint whose WordPiece ids the text becomes.
  text_tokenizer: str = 'bytes'
  allow_missing: bool = False  # no poster / plot: modality absent, not bad
  skip_bad_rows: bool = False  # leave bad movies out (and report them)


def check(c: MmImdbConfig) -> tuple[str, str]:
  """The layout at `c.path` (`find_layout`, a UserError saying how to get
  MM-IMDb when it is not there); ValueError naming the first field that
  cannot work."""
  for field in ('image_size', 'text_length'):
    if not isinstance(getattr(c, field), int) or getattr(c, field) < 1:
      raise ValueError(f'{field} must be a whole number >= 1, not '
                       f'{getattr(c, field)!r}')
  if c.image_fit not in FITS:
    raise ValueError(f'image_fit {c.image_fit!r} is not one of '
                     f'{", ".join(FITS)}')
  return find_layout(c.path)


def movie_example(c: MmImdbConfig, movie: Movie, poster_HxWx3, tok) -> dict:
  """The example of one movie; `poster_HxWx3` is None where it has none."""
  size = c.image_size
  image = (np.zeros((size, size, 3), np.uint8) if poster_HxWx3 is None else
           fit_square(poster_HxWx3, size, c.image_fit))
  text_L = (tok.encode([movie.text], c.text_length)[0] if movie.text else
            np.zeros(c.text_length, np.int32))
  return {'image': image, 'text': np.asarray(text_L, np.int32),
          'labels': movie.labels,
          'present': {'image': poster_HxWx3 is not None,
                      'text': bool(movie.text)},
          'id': movie.id}


class MmImdb(tfds.core.GeneratorBasedBuilder):
  """MM-IMDb: poster and plot of a movie; labels = its genres (23)."""

  name = 'mmimdb'
  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'First release.'}
  BUILDER_CONFIGS = [MmImdbConfig(
      name='default', description='Set data.overrides.path to your copy.')]

  @functools.cached_property
  def _scan(self):
    """(layout, path, movies, bad movies) of the config."""
    c = self.builder_config
    kind, path = find_layout(c.path)
    if kind == 'folder':
      movies, bad = scan_folder(path, c.allow_missing)
    else:
      movies, bad = scan_hdf5(path, os.path.expanduser(c.metadata),
                              c.allow_missing)
    return kind, path, movies, bad

  def target_names(self) -> dict[str, tuple[str, ...]]:
    return {'labels': GENRES}

  def _info(self):
    c = self.builder_config
    kind, path = check(c)
    tensor = tfds.features.Tensor
    size = c.image_size
    features = {
        'image': tensor(shape=(size, size, 3), dtype=np.uint8),
        'text': tensor(shape=(c.text_length,), dtype=np.int32),
        'labels': tensor(shape=(len(GENRES),), dtype=np.bool_),
        'present': {m: tensor(shape=(), dtype=np.bool_) for m in MODALITIES},
        'id': tfds.features.Text()}
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict(features), supervised_keys=None,
        description=f'MM-IMDb posters and plots ({kind} layout at {path}).')

  def _split_generators(self, dl_manager):
    del dl_manager  # The files are local.
    kind, path, movies, bad = self._scan
    if bad and not self.builder_config.skip_bad_rows:
      raise self._bad_error(bad)
    if not movies:
      raise errors.UserError(
          f'MM-IMDb at {path!r} has no good movie to build (all {len(bad)} '
          f'are bad); fix them or point data.overrides.path at another copy.')
    run = _Pass(len(movies), list(bad))
    parts = {s: [m for m in movies if m.split == s] for s in SPLITS.values()}
    return {s: self._generate_examples(kind, path, part, run)
            for s, part in parts.items() if part}

  def _bad_error(self, bad) -> errors.UserError:
    listed = '; '.join(f'{i} ({why})' for i, _, why in bad)
    return errors.UserError(
        f'MM-IMDb at {self._scan[1]!r} has {len(bad)} bad movie(s): {listed}; '
        f'fix them, or set data.overrides.skip_bad_rows=True to leave them '
        f'out (they are then listed in {REPORT} next to the dataset).')

  def _generate_examples(self, kind, path, movies, run):
    c = self.builder_config
    tok = tokenizer.for_text(c.text_tokenizer)
    with _poster_reader(kind, path) as read:
      for movie in movies:
        try:
          poster = None if movie.poster is None else read(movie.poster)
        except manifest.MediaError as e:
          run.bad.append((movie.id, movie.split,
                          f'poster dataset/{movie.id}.jpeg: {e}'))
        else:
          yield movie.id, movie_example(c, movie, poster, tok)
        if run.count():  # that was the last movie of the last split
          self._finish(run.bad)

  def _finish(self, bad):
    """Fails on bad movies, or (skip_bad_rows) writes the report of them."""
    if bad and not self.builder_config.skip_bad_rows:
      raise self._bad_error(bad)
    with open(os.path.join(self.data_dir, REPORT), 'w') as f:
      f.write('id\tsplit\treason\n')
      f.writelines(f'{i}\t{s}\t{why}\n' for i, s, why in bad)

  def download_and_prepare(self, **kwargs):  # pylint: disable=arguments-differ
    """Builds once; then, every time, says how many movies were skipped."""
    super().download_and_prepare(**kwargs)
    report = os.path.join(self.data_dir, REPORT)
    with open(report) as f:
      skipped = len(f.readlines()) - 1
    if skipped:
      print(f'{skipped} bad MM-IMDb movie(s) were skipped; see {report}.',
            flush=True)


class _Pass:
  """One build's pass over `total` movies: a progress bar, and the bad ones
  (those found before it, and posters that fail to decode)."""

  def __init__(self, total: int, bad: list):
    self.total, self.bad, self.done = total, bad, 0
    self.tally = progress.Tally(total, 'movies read')

  def count(self) -> bool:
    """Counts one movie read; True once every one has been."""
    self.done += 1
    self.tally.update(self.done)
    return self.done == self.total


@contextlib.contextmanager
def _poster_reader(kind: str, path: str):
  """`with _poster_reader(kind, path) as read:` read(poster) -> uint8
  [H, W, 3] RGB, from a JPEG path or a row of the HDF5's `images`."""
  if kind == 'folder':
    yield read_poster
    return
  import h5py  # pylint: disable=g-import-not-at-top
  with h5py.File(path, 'r') as f:
    images = f['images']
    yield lambda row: vgg_to_rgb(images[row])
