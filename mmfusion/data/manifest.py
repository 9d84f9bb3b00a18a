"""`manifest`: your own paired multimodal data, listed in a CSV or JSONL file.

TFDS registers builder configs by name, so a manifest is named through
`data.overrides`; mmfusion turns the overrides into a custom config named by
their digest (`manifest/default-1a2b3c4d`), built once into `data.data_dir`:

  config.data.name = 'manifest/default'
  config.data.modalities = ('image', 'audio', 'text')
  config.data.overrides = {'path': '/abs/path/manifest.csv',
                           'image_size': (28, 28), 'audio_samples': 16000}

or on the command line: `--config.data.name=manifest/default
--config.data.overrides="{'path': '/abs/path/manifest.jsonl'}"`. A manifest
of videos adds e.g. `'video_frames': 16, 'video_size': (64, 64)`, and
`'audio_from_video': True` to take `audio` from the clips' own sound.

The manifest has one example per row: a CSV file with a header row, or JSON
Lines (one object per line). Columns, all optional but one target (a `label`
or `labels` column, or the columns `targets` names):
  id      unique name of the example (default: its line number)
  image   file: .npy (uint8, or float in [0, 1]; [H, W] or [H, W, C]),
          .pgm/.ppm (Netpbm), or .png/.jpg/.bmp if Pillow is installed
  audio   file: .wav (PCM, 8-32 bit), .flac or .ogg (soundfile), .mp3,
          .m4a, .aac or .opus (PyAV): any rate, resampled to `sample_rate`,
          channels averaged; or .npy (float waveform at `sample_rate`); cut
          or zero-padded to `audio_samples`
  video   file: a clip FFmpeg decodes (.mp4, .webm, .mkv, .avi, ...) read
          by `video.read_video`: `video_frames` RGB frames sampled uniformly
          in time, each scaled to `video_size` as `video_crop` says
          ('center': cover and cut the middle, 'resize': stretch, 'pad':
          fit and pad with black); with `audio_from_video`, `audio` is the
          clip's sound track instead of a column (a clip without one is a
          bad row, or absent audio with `allow_missing`)
  start, end  with a video column: the seconds of the clip to read (empty:
          its start, its end); not numbers of `tabular`
  text    the text itself (UTF-8 byte tokens, cut to `text_length`)
  label   class name; the classes are `labels` or else those of train rows
  labels  class names joined by `|` (`cat|dog`; empty: none; in JSONL also a
          list), for multilabel tasks; the classes are `multilabel_classes`
          or else those of train rows
  targets the number columns that `targets` names (`targets=('score',)`),
          for regression: the `target` feature, not part of `tabular`
  split   train, validation, test or another name (default: a hash of the
          id sends 80/10/10% to train/validation/test)
  others  numbers: the `tabular` feature, float32 [F] (or name them in
          `numeric`)
Paths are relative to the manifest's folder (or absolute).

Features: `image` uint8 [H, W, C], `audio` float32 [S], `text` int32 [L],
`video` uint8 [T, H, W, 3], `tabular` float32 [F], `label`, `labels` bool
[C] (multi-hot), `target` float32 [R] (those the manifest has), `id`
(bytes) and `present` {modality: bool} (False only for cells left empty, or
the sound of a silent clip, when `allow_missing`); `target_names()` names
the C classes of `labels` and the R `targets`.

Bad rows (missing or unreadable file, wrong image shape, a clip without
frames or sound, bad start/end, unknown or missing label, unknown class in
labels, missing or non-numeric target, duplicate id, non-numeric number,
empty cell) stop the build with one UserError that lists every bad row's
line number and reasons. With `skip_bad_rows=True` they are left out
instead, listed in `skipped_rows.tsv` in the dataset's folder and counted on
stdout, at build and at every later prepare. When the manifest or a file it
names changes (size or time), the next prepare rebuilds the dataset.
"""

import csv
import dataclasses
import hashlib
import json
import math
import os
import re
import shutil
import wave

import numpy as np
import tensorflow_datasets as tfds

from mmfusion.runtime import errors
from mmfusion.data import speech
from mmfusion.data import tokenizer
from mmfusion.data import video

MODALITIES = ('image', 'audio', 'text', 'video')
RESERVED = ('id', 'label', 'labels', 'split') + MODALITIES
CLIP_TIMES = ('start', 'end')  # seconds of a video, with a video column
# Sound files read through `video.read_audio` (soundfile or PyAV).
AUDIO_TYPES = ('.flac', '.ogg', '.oga', '.mp3', '.m4a', '.aac', '.opus')
SEPARATOR = '|'  # between the class names of a `labels` cell
REPORT = 'skipped_rows.tsv'
FINGERPRINT = 'manifest.fingerprint'


@dataclasses.dataclass(eq=False)
class ManifestConfig(tfds.core.BuilderConfig):
  """Where the manifest is and what shapes its examples take."""
  path: str = ''  # the .csv or .jsonl manifest (absolute is safest)
  image_size: tuple[int, int] = (28, 28)  # every image must be H x W
  image_channels: int = 1
  sample_rate: int = 16_000
  audio_samples: int = 16_000  # longer waves are cut, shorter zero-padded
  text_length: int = 64  # bytes
  video_frames: int = 16  # sampled uniformly over the clip (or start..end)
  video_size: tuple[int, int] = (64, 64)  # H x W of every frame
  video_crop: str = 'center'  # 'center', 'resize' or 'pad' (video.CROPS)
  audio_from_video: bool = False  # `audio` is the video column's sound
  numeric: tuple[str, ...] | None = None  # None: every other column
  labels: tuple[str, ...] = ()  # `label` classes; (): the train rows', sorted
  # `labels` classes (multi-hot); (): the train rows', sorted
  multilabel_classes: tuple[str, ...] = ()
  targets: tuple[str, ...] = ()  # number columns that are the `target` [R]
  split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
  allow_missing: bool = False  # empty cell: modality absent, not a bad row
  skip_bad_rows: bool = False  # leave bad rows out (and report them)


class _BadRow(Exception):
  """Problems of one row, as short phrases."""


# Raised by every reader here and in `video` (one class, defined there).
MediaError = video.MediaError
fit_length = video.fit_length


# ------------------------------------------------------------------- Files ---
def _netpbm(path):
  """uint8 [H, W] or [H, W, 3] of a PGM/PPM file (binary P5/P6, ASCII P2/P3)."""
  with open(path, 'rb') as f:
    data = f.read()
  tokens, pos = [], 0
  while len(tokens) < 4:  # magic, width, height, maxval; '#' starts a comment
    match = re.compile(rb'\s*(#[^\n]*\n\s*)*(\S+)').match(data, pos)
    if not match:
      raise MediaError('truncated Netpbm header')
    tokens.append(match.group(2))
    pos = match.end()
  magic, w, h, maxval = tokens[0], *map(int, tokens[1:])
  channels = {b'P2': 1, b'P5': 1, b'P3': 3, b'P6': 3}.get(magic)
  if channels is None:
    raise MediaError(f'not a PGM/PPM file (magic {magic!r})')
  n = h * w * channels
  if magic in (b'P5', b'P6'):
    dtype = np.uint8 if maxval < 256 else np.dtype('>u2')
    x = np.frombuffer(data, dtype, n, pos + 1)
  else:
    x = np.asarray(data[pos:].split()[:n], np.int64)
  if x.size != n:
    raise MediaError('fewer pixels than its header says')
  x = np.rint(x.astype(np.float64) * 255 / maxval).astype(np.uint8)
  return x.reshape(h, w, channels)


def as_pixels(x) -> np.ndarray:
  """uint8 pixels of integers in 0..255 or floats in [0, 1] (as a .npy image
  holds them); MediaError for anything else."""
  x = np.asarray(x)
  if np.issubdtype(x.dtype, np.floating):
    if not np.isfinite(x).all():
      raise MediaError('float pixels must be finite (NaN or Inf found)')
    if x.size and not 0 <= x.min() <= x.max() <= 1:
      raise MediaError('float pixels must lie in [0, 1]')
    x = np.rint(x * 255)
  elif not np.issubdtype(x.dtype, np.integer) or x.size and (
      x.min() < 0 or x.max() > 255):
    raise MediaError(f'{x.dtype} pixels are not uint8 values')
  return x.astype(np.uint8)


def image_from_array(x, shape) -> np.ndarray:
  """uint8 [H, W, C] of an in-memory image, read as a .npy file would be:
  MediaError unless it has exactly `shape` ([H, W] counts as C = 1)."""
  x = as_pixels(x)
  if x.ndim == 2:
    x = x[..., None]
  if x.shape != tuple(shape):
    raise MediaError(f'shape {list(x.shape)} is not {list(shape)}')
  return x


def _npy(path) -> np.ndarray:
  """The array of a .npy file; MediaError for anything else (an .npz archive
  renamed, a pickle)."""
  x = np.load(path, allow_pickle=False)
  if not isinstance(x, np.ndarray):
    raise MediaError('unreadable (not a .npy array; an .npz archive?)')
  return x


# What a damaged file raises while read: truncated (EOFError), garbage
# headers (ValueError, wave.Error, SyntaxError for Pillow), chunk sizes past
# the end (RuntimeError from `wave` in Python 3.11, and from soundfile).
_UNREADABLE = (OSError, ValueError, KeyError, EOFError, RuntimeError,
               SyntaxError, wave.Error)


def read_image(path, shape) -> np.ndarray:
  """uint8 [H, W, C] from .npy, .pgm/.ppm/.pnm or (with Pillow) other formats;
  MediaError unless it has exactly `shape` ([H, W] counts as C = 1)."""
  if not os.path.isfile(path):
    raise MediaError('file not found')
  ext = os.path.splitext(path)[1].lower()
  try:
    if ext == '.npy':
      x = as_pixels(_npy(path))
    elif ext in ('.pgm', '.ppm', '.pnm'):
      x = _netpbm(path)
    else:
      try:
        from PIL import Image  # pylint: disable=g-import-not-at-top
      except ImportError:
        raise MediaError(f'reading {ext} needs Pillow (pip install pillow); '
                         f'or save images as .npy or .pgm') from None
      with Image.open(path) as im:
        x = np.asarray(im)
  except MediaError:
    raise
  except _UNREADABLE as e:
    raise MediaError(f'unreadable ({e})') from None
  if x.ndim == 2:
    x = x[..., None]
  if x.shape != tuple(shape):
    raise MediaError(f'shape {list(x.shape)} is not {list(shape)}')
  return x


def _wav(path):
  """(float32 mono samples in [-1, 1], sample rate) of a PCM WAV file."""
  with wave.open(path, 'rb') as f:
    channels, width = f.getnchannels(), f.getsampwidth()
    rate, raw = f.getframerate(), f.readframes(f.getnframes())
  if width == 1:
    x = (np.frombuffer(raw, np.uint8).astype(np.float32) - 128) / 128
  elif width == 3:
    b = np.frombuffer(raw, np.uint8).reshape(-1, 3).astype(np.int32)
    x = ((b[:, 0] << 8 | b[:, 1] << 16 | b[:, 2] << 24) >> 8) / 2.0**23
  else:
    x = np.frombuffer(raw, {2: '<i2', 4: '<i4'}[width]) / 2.0**(8 * width - 1)
  return x.reshape(-1, channels).mean(1).astype(np.float32), rate


def read_audio(path, sample_rate: int, samples: int) -> np.ndarray:
  """float32 [samples] mono wave at `sample_rate` from .wav, .npy or a sound
  file of AUDIO_TYPES (`video.read_audio`): resampled if needed, then cut or
  zero-padded."""
  if not os.path.isfile(path):
    raise MediaError('file not found')
  ext = os.path.splitext(path)[1].lower()
  if ext in AUDIO_TYPES:
    return video.read_audio(path, sample_rate, samples)
  try:
    if ext == '.wav':
      x, rate = _wav(path)
    elif ext == '.npy':
      x = _npy(path).astype(np.float32)
      rate = sample_rate
      if x.ndim != 1:
        raise MediaError(f'a waveform must be 1-D, not {list(x.shape)}')
    else:
      raise MediaError(f'{ext or "no extension"} is neither .ogg, .mp3, '
                       f'.m4a, .aac nor .opus, and is not .wav, .npy or .flac')
  except MediaError:
    raise
  except _UNREADABLE as e:
    raise MediaError(f'unreadable ({e})') from None
  if rate != sample_rate:
    x = speech.resample([x], rate, sample_rate)[0]
  return fit_length(x, samples)


def read_rows(path: str, require_label: bool = True):
  """(columns, [(line number, {column: value})]) of a CSV or JSONL manifest;
  rows to predict on (`require_label=False`) need no label column."""
  if not path:
    raise errors.UserError(
        "the manifest builder needs a file; set data.overrides={'path': "
        "'/abs/path/manifest.csv'}.")
  if not os.path.isfile(path):
    raise errors.UserError(f'no manifest file at {path!r}; pass an existing '
                           f'.csv or .jsonl file as data.overrides.path.')
  try:
    return _read_rows(path, require_label)
  except UnicodeDecodeError as e:
    with open(path, 'rb') as f:
      line = f.read()[:e.start].count(b'\n') + 1
    raise errors.UserError(
        f'the manifest {path!r} is not UTF-8 text: line {line} has the byte '
        f'{e.object[e.start:e.start + 1]!r}; save it as UTF-8.') from None


def _read_rows(path: str, require_label: bool):
  csv.field_size_limit(2**31 - 1)  # long texts are cells like any other
  rows = []
  with open(path, newline='', encoding='utf-8-sig') as f:
    if path.endswith(('.jsonl', '.json')):
      columns = {}
      for line, text in enumerate(f, start=1):
        if not text.strip():
          continue
        try:
          row = json.loads(text)
        except json.JSONDecodeError as e:
          row = {'__error__': f'not JSON ({e.msg})'}
        if not isinstance(row, dict):
          row = {'__error__': 'not a JSON object'}
        columns.update(dict.fromkeys(k for k in row if k != '__error__'))
        rows.append((line, row))
      columns = list(columns)
    else:
      reader = csv.DictReader(f)
      columns = list(reader.fieldnames or [])
      for row in reader:
        extra = row.pop(None, None)  # cells past the header's columns
        if extra:
          row = {'__error__': f'{len(extra)} more cells than the header\'s '
                              f'{len(columns)} columns'}
        rows.append((reader.line_num, row))
  if require_label and 'label' not in columns:
    raise errors.UserError(f'the manifest {path!r} has no label column; add '
                           f'one (columns found: {", ".join(columns)}).')
  return columns, rows


def _cell(row, column):
  value = row.get(column)
  return '' if value is None else str(value).strip()


def _ident(line, row):
  """The row's id, or its line number when it has none."""
  return _cell(row, 'id') or str(line)


def _names(row) -> list[str]:
  """The class names of a row's `labels` cell: 'a|b', or a JSON list."""
  value = row.get('labels')
  parts = value if isinstance(value, list) else _cell(row, 'labels').split(
      SEPARATOR)
  return [n for n in (str(p).strip() for p in parts) if n]


def _real(text: str) -> float | None:
  """The number a cell holds, or None unless it is a finite number."""
  try:
    x = float(text)
  except ValueError:
    return None
  return x if math.isfinite(x) else None


def _floats(values) -> np.ndarray:
  """float32 [len(values)] of `_real` numbers, 0 for None (of a bad row)."""
  return np.asarray([0.0 if x is None else x for x in values], np.float32)


def _preview(names) -> str:
  return ', '.join(names[:10]) + (', ...' if len(names) > 10 else '')


def check_targets(path: str, columns, c: ManifestConfig):
  """Fails with one sentence when the manifest has nothing to learn, or the
  config names target columns or classes the manifest does not have."""
  found = ', '.join(columns)
  if not ({'label', 'labels'} & set(columns) or c.targets):
    raise errors.UserError(
        f'the manifest {path!r} has no label or labels column and '
        f'data.overrides.targets names no column, so it has no target; add a '
        f'label column (a class name), a labels column (class names joined '
        f'by {SEPARATOR}), or name number columns in data.overrides.targets '
        f'(columns found: {found}).')
  reserved = [k for k in c.targets if k in RESERVED]
  if reserved:
    raise errors.UserError(
        f'data.overrides.targets names {reserved}, which are not number '
        f'columns ({", ".join(RESERVED)} are reserved); name number columns.')
  missing = [k for k in c.targets if k not in columns]
  if missing:
    raise errors.UserError(
        f'data.overrides.targets names {missing}, which the manifest {path!r} '
        f'has no column of; its columns are: {found}.')
  both = [k for k in c.numeric or () if k in c.targets]
  if both:
    raise errors.UserError(
        f'data.overrides.numeric and data.overrides.targets both name {both}; '
        f'a column is either an input or a target, so drop it from one.')
  for option, column in (('labels', 'label'), ('multilabel_classes',
                                                'labels')):
    if getattr(c, option) and column not in columns:
      raise errors.UserError(
          f'data.overrides.{option} lists classes, but the manifest {path!r} '
          f'has no {column} column; add one or drop the option.')
  bad = [n for n in c.multilabel_classes if not n.strip() or SEPARATOR in n]
  if bad:
    raise errors.UserError(
        f'data.overrides.multilabel_classes has {bad}: a class name must be '
        f'non-empty and without {SEPARATOR!r}, which separates the names of a '
        f'labels cell.')


def check_video_options(path: str, columns, c: ManifestConfig):
  """Fails with one sentence on video options that cannot work."""
  size = tuple(c.video_size)
  if not (isinstance(c.video_frames, int) and c.video_frames >= 1 and
          len(size) == 2 and all(isinstance(n, int) and n >= 1 for n in size)):
    raise errors.UserError(
        f'data.overrides.video_frames ({c.video_frames!r}) must be a whole '
        f'number >= 1 and video_size ({c.video_size!r}) two of them (H, W).')
  if c.video_crop not in video.CROPS:
    raise errors.UserError(
        f'data.overrides.video_crop is {c.video_crop!r}; choose one of: '
        f'{", ".join(video.CROPS)}.')
  if c.audio_from_video and 'video' not in columns:
    raise errors.UserError(
        f'data.overrides.audio_from_video takes the sound of the video '
        f'column, but the manifest {path!r} has none; add one or drop the '
        f'option.')
  if c.audio_from_video and 'audio' in columns:
    raise errors.UserError(
        f'the manifest {path!r} has an audio column and '
        f'data.overrides.audio_from_video takes audio from its videos; drop '
        f'one of them.')


def sort_labels(labels):
  """Numeric-looking labels sort by value ('2' < '10'), others as strings."""
  try:
    return sorted(labels, key=float)
  except ValueError:
    return sorted(labels)


class Manifest(tfds.core.GeneratorBasedBuilder):
  """Examples listed in a user's CSV or JSONL manifest."""

  VERSION = tfds.core.Version('1.1.0')
  RELEASE_NOTES = {
      '1.0.0': 'First release.',
      '1.1.0': '`labels` (multi-hot) and `target` (numbers) columns; `label` '
               'optional when one of them is there.',
  }
  BUILDER_CONFIGS = [ManifestConfig(
      name='default', description='Set data.overrides.path to your manifest.')]

  # ---------------------------------------------------------- Reading ---
  def _read(self):
    if not hasattr(self, '_rows'):
      c = self.builder_config
      self._path = os.path.abspath(c.path) if c.path else ''
      columns, self._rows = read_rows(self._path, require_label=False)
      check_targets(self._path, columns, c)
      check_video_options(self._path, columns, c)
      self._modalities = [m for m in MODALITIES if m in columns or (
          m == 'audio' and c.audio_from_video)]
      self._targets = [str(k) for k in c.targets]
      times = CLIP_TIMES if 'video' in columns else ()
      self._numeric = list(c.numeric) if c.numeric is not None else [
          k for k in columns
          if k not in RESERVED + times + tuple(self._targets)]
      train = [r for n, r in self._rows if self._split_of(n, r) == 'train']
      self._labels = self._classes('label', c.labels, {
          _cell(r, 'label') for r in train} - {''}, columns)
      self._multilabel = self._classes('labels', c.multilabel_classes, {
          n for r in train for n in _names(r)}, columns)
      self._label_ids = {name: i for i, name in enumerate(self._labels or ())}
      self._multilabel_ids = {name: i for i, name in enumerate(
          self._multilabel or ())}
    return self._rows

  def _classes(self, column, given, seen, columns):
    """The classes of `column` (None without one): `given`, else `seen`."""
    if column not in columns:
      return None
    classes = [str(v) for v in given] or sort_labels(seen)
    if not classes:
      option = 'labels' if column == 'label' else 'multilabel_classes'
      raise errors.UserError(
          f'the manifest {self._path!r} has no labelled train rows (in its '
          f'{column} column); label some, or list the classes in '
          f'data.overrides.{option}.')
    return classes

  def target_names(self) -> dict[str, tuple[str, ...]]:
    """{'labels': the C classes, 'target': the R target columns}, of those
    the manifest has."""
    self._read()
    names = {}
    if self._multilabel is not None:
      names['labels'] = tuple(self._multilabel)
    if self._targets:
      names['target'] = tuple(self._targets)
    return names

  def numeric_columns(self) -> list[str]:
    """The number columns, in the order of the `tabular` feature."""
    self._read()
    return list(self._numeric)

  def _split_of(self, line, row):
    if 'split' in row:
      return _cell(row, 'split')
    digest = hashlib.sha1(_ident(line, row).encode()).digest()
    u = int.from_bytes(digest[:8], 'big') / 2**64
    train, validation, _ = self.builder_config.split_fractions
    return ('train' if u < train else 'validation'
            if u < train + validation else 'test')

  def _file(self, row, column):
    p = os.path.expanduser(_cell(row, column))
    return p if os.path.isabs(p) else os.path.join(os.path.dirname(
        self._path), p)

  def _example(self, line, row):
    """The example of one row, or _BadRow listing all its problems."""
    c = self.builder_config
    problems, ex = [], {'present': {}}
    if '__error__' in row:
      raise _BadRow(row['__error__'])
    if self._labels is not None:
      label = _cell(row, 'label')
      if not label:
        problems.append('no label')
      elif label not in self._label_ids:
        problems.append(f'label {label!r} is not one of the classes '
                        f'({_preview(self._labels)})')
      else:
        ex['label'] = self._label_ids[label]
    if self._multilabel is not None:
      ex['labels'] = np.zeros(len(self._multilabel), np.bool_)
      for name in _names(row):
        if name in self._multilabel_ids:
          ex['labels'][self._multilabel_ids[name]] = True
        else:
          problems.append(f'labels {name!r} is not one of the classes '
                          f'({_preview(self._multilabel)})')
    if self._targets:
      values = [_real(_cell(row, k)) for k in self._targets]
      problems += [f'target {k} {_cell(row, k)!r} is not a real number'
                   if _cell(row, k) else f'no target {k}'
                   for k, x in zip(self._targets, values) if x is None]
      ex['target'] = _floats(values)
    split = self._split_of(line, row)
    if not re.fullmatch(r'[A-Za-z]\w*', split):
      problems.append(f'split {split!r} is not a name like train or test')
    shapes = {'image': (*c.image_size, c.image_channels),
              'audio': (c.audio_samples,), 'text': (c.text_length,),
              'video': (c.video_frames, *c.video_size, 3)}
    window = self._window(row, problems) if 'video' in self._modalities else (
        None, None)
    failed = False  # the video's file could not be read
    # The clip's sound after the clip: nothing more to say if it is bad.
    for m in sorted(self._modalities, key=lambda m: m == 'audio' and
                    c.audio_from_video):
      column = 'video' if m == 'audio' and c.audio_from_video else m
      ex['present'][m] = bool(_cell(row, column))
      ex[m] = np.zeros(shapes[m], np.int32 if m == 'text' else np.float32
                       if m == 'audio' else np.uint8)
      if column != m and (not ex['present'][m] or failed):
        ex['present'][m] = False
        continue
      if not ex['present'][m]:
        if not c.allow_missing:
          problems.append(f'empty {m}')
        continue
      try:
        ex[m] = self._read_cell(row, m, window)
      except video.NoAudioTrack as e:
        ex['present'][m] = False  # a silent clip: its audio is absent
        if not c.allow_missing:
          problems.append(f'audio of video {_cell(row, column)!r}: {e} (set '
                          f'allow_missing=True to mark its audio absent)')
      except MediaError as e:
        failed = failed or m == 'video'
        problems.append(f'{m} {_cell(row, m)!r}: {e}' if column == m else
                        f'audio of video {_cell(row, column)!r}: {e}')
    if self._numeric:
      values = [_real(_cell(row, k)) for k in self._numeric]
      problems += [f'{k} {_cell(row, k)!r} is not a finite number'
                   for k, x in zip(self._numeric, values) if x is None]
      ex['tabular'] = _floats(values)
    if problems:
      raise _BadRow('; '.join(problems))
    ex['id'] = _ident(line, row)
    return split, ex

  def _read_cell(self, row, m, window):
    """The array of modality `m` of a row; MediaError for a bad file."""
    c = self.builder_config
    if m == 'image':
      return read_image(self._file(row, m), (*c.image_size, c.image_channels))
    if m == 'text':
      return tokenizer.ByteTokenizer().encode(_cell(row, m),
                                              c.text_length)[0]
    start, end = window
    if m == 'video':
      return video.read_video(self._file(row, m), frames=c.video_frames,
                              size=c.video_size, start=start, end=end,
                              crop=c.video_crop)
    if c.audio_from_video:
      return video.read_audio_track(
          self._file(row, 'video'), sample_rate=c.sample_rate,
          samples=c.audio_samples, start=start, end=end)
    return read_audio(self._file(row, m), c.sample_rate, c.audio_samples)

  def _window(self, row, problems):
    """(start, end) seconds of a row's clip (None where a cell is empty);
    a cell that is not a number of seconds is one of `problems`."""
    out = []
    for k in CLIP_TIMES:
      text = _cell(row, k)
      x = _real(text) if text else None
      if text and (x is None or x < 0):
        problems.append(f'{k} {text!r} is not a number of seconds')
      out.append(x if x is not None and x >= 0 else None)
    return tuple(out)

  def _scan(self):
    """{split: [(line, row)]} of good rows, and [(line, id, reason)] of bad."""
    good, bad, seen = {}, [], {}
    for line, row in self._read():
      ident = _ident(line, row)
      problems = [f'id {ident!r} repeats line {seen[ident]}'] if (
          ident in seen) else []
      seen.setdefault(ident, line)
      try:
        split, _ = self._example(line, row)
      except _BadRow as e:
        problems.insert(0, str(e))
      if problems:
        bad.append((line, ident, '; '.join(problems)))
      else:
        good.setdefault(split, []).append((line, row))
    return good, bad

  def fingerprint(self) -> str:
    """Digest of the manifest and the size and time of every file it names."""
    h = hashlib.sha1()
    with open(self._path, 'rb') as f:
      h.update(f.read())
    for _, row in self._read():
      for m in ('image', 'audio', 'video'):
        if _cell(row, m):
          try:
            st = os.stat(self._file(row, m))
            h.update(f'{m}:{_cell(row, m)}:{st.st_size}:{st.st_mtime_ns}'
                     .encode())
          except OSError:
            h.update(f'{m}:{_cell(row, m)}:missing'.encode())
    return h.hexdigest()

  # ------------------------------------------------------------ TFDS ---
  def _info(self):
    c = self.builder_config
    self._read()
    tensor = tfds.features.Tensor
    features = {'id': tfds.features.Text(),
                'present': {m: tensor(shape=(), dtype=np.bool_)
                            for m in self._modalities}}
    if self._labels is not None:
      features['label'] = tfds.features.ClassLabel(names=self._labels)
    if self._multilabel is not None:
      features['labels'] = tensor(shape=(len(self._multilabel),),
                                  dtype=np.bool_)
    if self._targets:
      features['target'] = tensor(shape=(len(self._targets),),
                                  dtype=np.float32)
    if 'image' in self._modalities:
      features['image'] = tensor(shape=(*c.image_size, c.image_channels),
                                 dtype=np.uint8)
    if 'audio' in self._modalities:
      features['audio'] = tensor(shape=(c.audio_samples,), dtype=np.float32)
    if 'text' in self._modalities:
      features['text'] = tensor(shape=(c.text_length,), dtype=np.int32)
    if 'video' in self._modalities:
      features['video'] = tensor(shape=(c.video_frames, *c.video_size, 3),
                                 dtype=np.uint8)
    if self._numeric:
      features['tabular'] = tensor(shape=(len(self._numeric),),
                                   dtype=np.float32)
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict(features), supervised_keys=None,
        description=f'Examples of the manifest {self._path}.')

  def _split_generators(self, dl_manager):
    del dl_manager  # The files are local.
    good, bad = self._scan()
    if bad and not self.builder_config.skip_bad_rows:
      listed = '; '.join(f'line {n} ({why})' for n, _, why in bad)
      hint = (' (columns other than id, label, labels, split, the modalities '
              'and the targets are numbers unless data.overrides.numeric '
              'lists which are)'
              if any('finite number' in why for _, _, why in bad) else '')
      raise errors.UserError(
          f'the manifest {self._path!r} has {len(bad)} bad row(s): {listed}; '
          f'fix them{hint}, or set data.overrides.skip_bad_rows=True to leave '
          f'them out (they are then listed in {REPORT} next to the dataset).')
    with open(os.path.join(self.data_dir, REPORT), 'w') as f:
      f.write('line\tid\treason\n')
      f.writelines(f'{n}\t{i}\t{why}\n' for n, i, why in bad)
    with open(os.path.join(self.data_dir, FINGERPRINT), 'w') as f:
      f.write(self.fingerprint())
    return {split: self._generate_examples(rows)
            for split, rows in sorted(good.items())}

  def _generate_examples(self, rows):
    for line, row in rows:
      _, ex = self._example(line, row)
      yield line, ex

  def _build_data_dir(self, given_data_dir):
    """TFDS's dataset folder, emptied first when the manifest has changed
    since it was built (TFDS then builds afresh instead of reusing it)."""
    root, data_dir = super()._build_data_dir(given_data_dir)
    stamp = os.path.join(data_dir, FINGERPRINT)
    if os.path.exists(stamp):
      self._read()
      with open(stamp) as f:
        if f.read() != self.fingerprint():
          print(f'The manifest {self._path} or a file it names changed since '
                f'{data_dir} was built; rebuilding.', flush=True)
          shutil.rmtree(data_dir)
    return root, data_dir

  def download_and_prepare(self, **kwargs):  # pylint: disable=arguments-differ
    """Builds once; then, every time, says how many rows were skipped."""
    super().download_and_prepare(**kwargs)
    report = os.path.join(self.data_dir, REPORT)
    with open(report) as f:
      skipped = len(f.readlines()) - 1
    if skipped:
      print(f'{skipped} bad row(s) of {self._path} were skipped; see {report}.',
            flush=True)
