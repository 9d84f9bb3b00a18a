r"""The `manifest` builder on a large generated manifest: every bad row reported?

  python -m benchmarks.manifest_scale --rows=100000 --bad_fraction=0.03 \
      --workdir=DIR [--format=jsonl|csv] [--seed=0] [--gaps] \
      [--profile=FILE.prof] [--out=benchmarks/MANIFEST_SCALE.md]

Writes a manifest of --rows rows into DIR (its `img/`, `snd/`, `bad/`,
`tfds/` and `manifest.*` are replaced), with every modality the builder reads:
images as .npy (uint8, int64, float in [0, 1]), binary and ASCII PGM (8 and
16 bit), PNG; audio as 8/16/24/32-bit mono and stereo WAV, an 8 kHz WAV (to
resample), waves longer and shorter than `audio_samples`, float32/float64
.npy; text (Unicode, commas and quotes, over-long, multi-line); two number
columns; labels; explicit, custom and (JSONL) hashed splits; rows without an
id; blank lines. The media are a few small files that many rows share: the
point is the row-handling machinery, not decoding.

About --bad_fraction of the rows are made bad, spread evenly over VARIANTS:
each way of being bad that `mmfusion/data/manifest.py` detects (missing,
unreadable, garbage or wrong-shape files of each format, pixels out of range,
a waveform of the wrong rank, unknown file types, empty cells, absent JSON
keys, short CSV rows, unknown or missing labels, bad split names, non-finite
or non-numeric numbers, duplicate ids, lines that are not JSON or not JSON
objects, rows with several problems at once). The script remembers every
expected (line, reason kind) pair.

Then it builds the dataset as `mmfusion.main` does (`pipeline.get_builder` on
`data.name='manifest/default'` with `data.overrides`, then
`pipeline.prepare`), with `skip_bad_rows=True`, measuring wall time, peak RSS
(this process and any children) and rows/s, and checks that
`skipped_rows.tsv` lists exactly the bad lines, each with exactly its
expected reasons (and, for a duplicate id, the line it repeats), and that the
built splits hold exactly the good rows: each id once, in its split, with its
label, numbers, text, image and audio. Any mismatch fails the run (exit 1).

GAPS below are the damaged files the builder once stopped on with a
traceback (a 0-byte .npy image, an .npz archive named .npy, a WAV whose chunk
sizes run past its end); they are made by default (--nogaps leaves them out)
and must be reported as unreadable files like the others.
"""

import csv
import dataclasses
import datetime
import io
import json
import os
import platform
import re
import resource
import shlex
import shutil
import struct
import sys
import time
import zlib

from absl import app, flags
import numpy as np

from mmfusion.runtime import cli

_ROWS = flags.DEFINE_integer('rows', 100_000, 'Rows of the manifest.')
_BAD = flags.DEFINE_float('bad_fraction', 0.03,
                          'About this fraction of the rows is made bad.')
_SEED = flags.DEFINE_integer('seed', 0, 'Seed of the generator.')
_FORMAT = flags.DEFINE_enum('format', 'jsonl', ['jsonl', 'csv'],
                            'Manifest format.')
_GAPS = flags.DEFINE_bool(
    'gaps', True, 'Also make the damaged files the builder once stopped on '
    '(GAPS): they must be reported as unreadable.')
_PROFILE = flags.DEFINE_string(
    'profile', None, 'Run the build under cProfile, write the stats here and '
    'print the top functions.')
# --workdir (the manifest, its files and the dataset go there) and --out (the
# Markdown result, also printed) are mmfusion's shared flags.
flags.declare_key_flag('workdir')
flags.declare_key_flag('out')

H, W, SAMPLES, RATE, TEXT_LENGTH = 16, 16, 800, 16_000, 32
LABELS = ('ant', 'bee', 'cat', 'dog', 'eel')
NUMERIC = ('age', 'score')
FIELDS = ('id', 'image', 'audio', 'text', *NUMERIC, 'label', 'split')
MISSING = object()  # a JSON key left out (in CSV: a short row)
RAW = '__raw__'  # a row written as this line, verbatim


def _have(module: str) -> bool:
  try:
    __import__(module)
    return True
  except ImportError:
    return False


# ------------------------------------------------------------------ Media ---
def _png(pixels_HxW: np.ndarray) -> bytes:
  """An 8-bit grayscale PNG (written by hand: Pillow is only needed to read)."""
  h, w = pixels_HxW.shape
  def chunk(tag, data):
    return (struct.pack('>I', len(data)) + tag + data +
            struct.pack('>I', zlib.crc32(tag + data) & 0xffffffff))
  raw = b''.join(b'\0' + row.tobytes() for row in pixels_HxW.astype(np.uint8))
  return (b'\x89PNG\r\n\x1a\n' +
          chunk(b'IHDR', struct.pack('>IIBBBBB', w, h, 8, 0, 0, 0, 0)) +
          chunk(b'IDAT', zlib.compress(raw)) + chunk(b'IEND', b''))


def _wav(wave_SxC: np.ndarray, rate: int, width: int, tag: int = 1) -> bytes:
  """A WAV file of samples in [-1, 1]: PCM (tag 1) of `width` bytes, or the
  bytes of float32 samples under any other format tag."""
  x = np.asarray(wave_SxC, np.float64).reshape(len(wave_SxC), -1)
  if tag != 1:
    data = x.astype('<f4').tobytes()
  elif width == 1:
    data = (np.rint(x * 127) + 128).astype(np.uint8).tobytes()
  elif width == 3:
    v = np.rint(x * (2**23 - 1)).astype('<i4').reshape(-1, 1).view(np.uint8)
    data = v[:, :3].tobytes()
  else:
    data = np.rint(x * (2**(8 * width - 1) - 1)).astype(
        {2: '<i2', 4: '<i4'}[width]).tobytes()
  channels = x.shape[1]
  fmt = struct.pack('<HHIIHH', tag, channels, rate, rate * channels * width,
                    channels * width, 8 * width)
  return (b'RIFF' + struct.pack('<I', 20 + len(fmt) + len(data)) + b'WAVE' +
          b'fmt ' + struct.pack('<I', len(fmt)) + fmt +
          b'data' + struct.pack('<I', len(data)) + data)


def _npy(x) -> bytes:
  f = io.BytesIO()
  np.save(f, x, allow_pickle=True)
  return f.getvalue()


@dataclasses.dataclass
class Media:
  images: dict  # good image path (relative) -> expected uint8 [H, W, 1]
  audio: list  # good audio paths (relative)
  bad: dict  # (kind, name) -> relative path


def make_media(root: str, rng) -> Media:
  """The few small files that the rows name, good ones and bad ones."""
  def put(rel, data):
    os.makedirs(os.path.dirname(os.path.join(root, rel)), exist_ok=True)
    with open(os.path.join(root, rel), 'wb') as f:
      f.write(data)
    return rel

  pix = lambda: rng.integers(0, 256, (H, W), dtype=np.uint8)
  images = {}
  a = pix()
  images[put('img/u8.npy', _npy(a))] = a
  a = pix()
  images[put('img/sub dir/u8 c.npy', _npy(a[..., None]))] = a
  f = rng.random((H, W), dtype=np.float32)
  images[put('img/f32.npy', _npy(f))] = np.rint(f * 255).astype(np.uint8)
  a = pix()
  images[put('img/i64.npy', _npy(a.astype(np.int64)))] = a
  a = pix()
  images[put('img/p5.pgm', b'P5\n# made by manifest_scale\n%d %d\n255\n' %
             (W, H) + a.tobytes())] = a
  a = rng.integers(0, 16, (H, W))
  images[put('img/p2.pgm', b'P2\n%d %d\n15\n' % (W, H) + '\n'.join(
      ' '.join(map(str, r)) for r in a).encode())] = np.rint(
          a * 255 / 15).astype(np.uint8)
  a = rng.integers(0, 65536, (H, W))
  images[put('img/p5_16.pgm', b'P5 %d %d 65535\n' % (W, H) +
             a.astype('>u2').tobytes())] = np.rint(
                 a * 255 / 65535).astype(np.uint8)
  a = pix()
  png = put('img/g.png', _png(a))
  if _have('PIL'):
    images[png] = a
  images = {k: v.reshape(H, W, 1) for k, v in images.items()}

  t = np.arange(2000) / RATE
  tone = lambda hz, n: (0.5 * np.sin(2 * np.pi * hz * t[:n])).astype(np.float32)
  audio = [
      put('snd/m16.wav', _wav(tone(440, SAMPLES), RATE, 2)),
      put('snd/s16.wav', _wav(np.stack([tone(300, SAMPLES),
                                        tone(500, SAMPLES)], 1), RATE, 2)),
      put('snd/m8.wav', _wav(tone(350, SAMPLES), RATE, 1)),
      put('snd/m24.wav', _wav(tone(600, SAMPLES), RATE, 3)),
      put('snd/m32.wav', _wav(tone(700, SAMPLES), RATE, 4)),
      put('snd/r8k.wav', _wav(tone(200, SAMPLES // 2), RATE // 2, 2)),
      put('snd/long.wav', _wav(tone(250, 2000), RATE, 2)),
      put('snd/short.wav', _wav(tone(800, 100), RATE, 2)),
      put('snd/w32.npy', _npy(tone(900, SAMPLES))),
      put('snd/w64.npy', _npy(tone(1000, 600).astype(np.float64))),
  ]
  os.makedirs(os.path.join(root, 'snd/folder.wav'), exist_ok=True)

  good_png = _png(pix())
  good_wav = _wav(tone(440, SAMPLES), RATE, 2)
  bad = {}
  def add(kind, name, data):
    bad[kind, name] = put(f'bad/{name}', data) if data is not None else name
  add('image_not_found', 'img/nope.npy', None)
  add('image_not_found', 'img', None)  # a folder
  add('image_unreadable', 'garbage.npy', b'this is not a .npy file\n')
  add('image_unreadable', 'truncated.npy', _npy(pix())[:-20])
  add('image_unreadable', 'pickle.npy', _npy(np.array([{'a': 1}], object)))
  add('image_unreadable', 'p5_short.pgm', b'P5\n%d %d\n255\n' % (W, H) +
      bytes(W * H // 2))
  add('image_unreadable', 'bad_width.pgm', b'P5\nab %d\n255\n' % H +
      bytes(W * H))
  add('image_not_netpbm', 'p7.pgm', b'P7\n%d %d\n255\n' % (W, H) +
      bytes(W * H))
  add('image_netpbm_header', 'empty.pgm', b'')
  add('image_netpbm_header', 'header.pgm', b'P5\n16')
  add('image_few_pixels', 'p2_short.pgm', b'P2\n%d %d\n255\n' % (W, H) +
      b' '.join([b'7'] * (W * H - 9)))
  add('image_float_range', 'f2.npy', _npy(np.full((H, W), 2.0, np.float32)))
  add('image_float_range', 'fneg.npy', _npy(np.full((H, W), -0.5)))
  add('image_dtype', 'i16.npy', _npy(np.full((H, W), 300, np.int16)))
  add('image_dtype', 'neg.npy', _npy(np.full((H, W), -1, np.int8)))
  add('image_dtype', 'bool.npy', _npy(np.ones((H, W), bool)))
  add('image_dtype', 'str.npy', _npy(np.full((H, W), 'x')))
  add('image_shape', 'big.npy', _npy(np.zeros((28, 28), np.uint8)))
  add('image_shape', 'rgb.npy', _npy(np.zeros((H, W, 3), np.uint8)))
  add('image_shape', 'rgb.ppm', b'P6\n%d %d\n255\n' % (W, H) +
      bytes(3 * W * H))
  add('image_shape', '4d.npy', _npy(np.zeros((1, H, W, 1), np.uint8)))
  if _have('PIL'):
    add('image_unreadable', 'garbage.png', b'not a png at all')
    add('image_unreadable', 'truncated.png', good_png[:len(good_png) // 2])
    add('image_shape', 'small.png', _png(np.zeros((8, 8), np.uint8)))
  else:
    add('image_needs_pillow', 'plain.png', good_png)
  add('audio_not_found', 'snd/nope.wav', None)
  add('audio_not_found', 'snd/folder.wav', None)  # a folder
  add('audio_unreadable', 'garbage.wav', b'this is not a WAV file')
  add('audio_unreadable', 'empty.wav', b'')
  add('audio_unreadable', 'float.wav', _wav(tone(440, SAMPLES), RATE, 4, 3))
  add('audio_unreadable', 'header.wav', good_wav[:20])
  add('audio_unreadable', 'garbage_a.npy', b'this is not a .npy file either')
  add('audio_unreadable', 'empty_a.npy', b'')
  add('audio_unreadable', 'str_a.npy', _npy(np.array(['a', 'b'])))
  add('audio_not_1d', 'wave2d.npy', _npy(np.zeros((SAMPLES, 2), np.float32)))
  add('audio_unreadable', 'sound.mp3', b'ID3 not decoded')  # via PyAV
  add('audio_format', 'sound', good_wav)  # no extension
  if not _have('soundfile'):
    add('audio_needs_soundfile', 'sound.flac', b'fLaC not decoded')
  return Media(images, audio, bad)


# GAPS: (kind the row should be reported under, file name, content, why not
# yet). Today the build stops on them with a traceback instead.
GAPS = [
    ('image_unreadable', 'empty_i.npy', b'',
     "read_image: np.load raises EOFError on a 0-byte .npy, which its "
     "`except (OSError, ValueError, SyntaxError)` does not catch"),
    ('audio_unreadable', 'npz_a.npy', 'npz',
     "read_audio: a .npy that is a zip (np.savez) loads as an NpzFile, and "
     "`.astype` raises AttributeError, which is not caught"),
    ('audio_unreadable', 'chunk.wav', b'RIFF....WAVEnot really',
     "read_audio: a WAV whose chunk sizes overrun the file makes Python 3.11's "
     "wave module raise RuntimeError (chunk seek), which is not caught"),
]
if _have('soundfile'):
  GAPS.append(('audio_unreadable', 'garbage.flac', b'fLaC garbage',
               "read_audio: soundfile raises LibsndfileError (a RuntimeError) "
               "on a garbage .flac, which is not caught"))


def add_gaps(root: str, media: Media):
  for kind, name, data, _ in GAPS:
    if data == 'npz':
      f = io.BytesIO()
      np.savez(f, a=np.zeros(5))
      data = f.getvalue()
    os.makedirs(os.path.join(root, 'bad'), exist_ok=True)
    with open(os.path.join(root, 'bad', name), 'wb') as f:
      f.write(data)
    media.bad['gap:' + kind, name] = f'bad/{name}'


# --------------------------------------------------------------- Variants ---
# Each variant turns a good row (a dict; values may be MISSING) bad and
# returns the kinds of reason the builder must give for it. `ctx` has the
# generator, the format, the media, and the earlier rows (for duplicate ids).
def _set(**cells):
  def variant(row, ctx):
    del ctx
    row.update(cells)
    return []
  return variant


def _file(column, kind):
  def variant(row, ctx):
    names = [p for (k, _), p in ctx.media.bad.items() if k == kind]
    row[column] = ctx.pick(names)
    if ctx.rng.random() < 0.2 and not os.path.isabs(row[column]):
      row[column] = os.path.join(ctx.root, row[column])
    return [kind.removeprefix('gap:')]
  variant.file_kind = kind
  return variant


def _cell(column, kind, values, json_values=()):
  def variant(row, ctx):
    options = list(values) + (list(json_values) if ctx.fmt == 'jsonl' else [])
    row[column] = ctx.pick(options)
    return [kind]
  return variant


def _unknown_label(row, ctx):
  row['label'] = ctx.pick(['zebra', 'Cat', 'ants', '3', 'ant bee'])
  row['split'] = ctx.pick(['test', 'validation'])  # not train: no new class
  return ['unknown_label']


def _duplicate(source):
  def variant(row, ctx):
    earlier = {'good': ctx.good_ids, 'bad': ctx.bad_ids,
               'line': ctx.no_id_lines}[source] or ctx.good_ids
    row['id'] = ctx.pick(earlier)
    return [f'duplicate_id@{ctx.first[row["id"]]}']
  return variant


def _raw(kind, lines):
  def variant(row, ctx):
    row.clear()
    row[RAW] = ctx.pick(lines)
    return [kind]
  return variant


def _short_row(row, ctx):
  """CSV: a row cut after its first k cells (the rest read as None)."""
  k = int(ctx.rng.integers(1, len(FIELDS) - 1))
  for column in FIELDS[k:]:
    row[column] = MISSING
  return [_EMPTY_KIND[c] for c in FIELDS[k:] if c != 'id']


def _missing_key(row, ctx):
  """JSONL: a key left out."""
  column = ctx.pick(['image', 'audio', 'text', *NUMERIC, 'label'])
  row[column] = MISSING
  return [_EMPTY_KIND[column]]


_EMPTY_KIND = {'image': 'empty_image', 'audio': 'empty_audio',
               'text': 'empty_text', 'age': 'number:age',
               'score': 'number:score', 'label': 'no_label',
               'split': 'bad_split'}
_NAN = float('nan')


def _several(row, ctx):
  """Two to four problems in one row: each must be listed."""
  parts = [_file('image', 'image_not_found'), _file('audio', 'audio_unreadable'),
           _cell('text', 'empty_text', ['', ' ']),
           _cell('age', 'number:age', ['abc', 'inf']),
           _cell('score', 'number:score', ['', '1,5']),
           _unknown_label, _cell('split', 'bad_split', ['train set', '']),
           _cell('label', 'no_label', ['']), _duplicate('good')]
  chosen = sorted(ctx.rng.choice(len(parts), int(ctx.rng.integers(2, 5)),
                                 replace=False))
  if 5 in chosen and 7 in chosen:  # an unknown label, or none
    chosen.remove(7)
  kinds = []
  for i in chosen:
    kinds += parts[i](row, ctx)
  return kinds


VARIANTS = [  # (name, formats, variant)
    ('no label', 'csv jsonl', _cell('label', 'no_label', ['', '   '], [None])),
    ('unknown label (validation/test row)', 'csv jsonl', _unknown_label),
    ('bad split name', 'csv jsonl',
     _cell('split', 'bad_split', ['train set', '1st', '', 'val-1'])),
    ('empty image cell', 'csv jsonl',
     _cell('image', 'empty_image', ['', ' '], [None])),
    ('empty audio cell', 'csv jsonl',
     _cell('audio', 'empty_audio', ['', ' '], [None])),
    ('empty text', 'csv jsonl', _cell('text', 'empty_text', ['', '  '], [None])),
    *[(f'{column} not a finite number', 'csv jsonl', _cell(
        column, f'number:{column}',
        ['abc', 'nan', 'inf', '-Infinity', '', '1,5', '0x10', 'NaN '],
        [True, [1], None, {'a': 1}, _NAN])) for column in NUMERIC],
    ('image: file not found', 'csv jsonl', _file('image', 'image_not_found')),
    ('image: unreadable', 'csv jsonl', _file('image', 'image_unreadable')),
    ('image: not PGM/PPM', 'csv jsonl', _file('image', 'image_not_netpbm')),
    ('image: truncated Netpbm header', 'csv jsonl',
     _file('image', 'image_netpbm_header')),
    ('image: fewer pixels than the header', 'csv jsonl',
     _file('image', 'image_few_pixels')),
    ('image: float pixels outside [0, 1]', 'csv jsonl',
     _file('image', 'image_float_range')),
    ('image: pixels not uint8 values', 'csv jsonl',
     _file('image', 'image_dtype')),
    ('image: wrong shape', 'csv jsonl', _file('image', 'image_shape')),
    ('image: needs Pillow', 'csv jsonl', _file('image', 'image_needs_pillow')),
    ('audio: file not found', 'csv jsonl', _file('audio', 'audio_not_found')),
    ('audio: unreadable', 'csv jsonl', _file('audio', 'audio_unreadable')),
    ('audio: waveform not 1-D', 'csv jsonl', _file('audio', 'audio_not_1d')),
    ('audio: not .wav/.npy/.flac', 'csv jsonl', _file('audio', 'audio_format')),
    ('audio: .flac needs soundfile', 'csv jsonl',
     _file('audio', 'audio_needs_soundfile')),
    ('duplicate id (of a good row)', 'csv jsonl', _duplicate('good')),
    ('duplicate id (of a bad row)', 'csv jsonl', _duplicate('bad')),
    ('id equal to the line number of an id-less row', 'csv jsonl',
     _duplicate('line')),
    ('line not JSON', 'jsonl', _raw('not_json', [
        '{"id": "x", "label": "ant"', "{'id': 'x', 'label': 'ant'}",
        'label=ant', '{"id": "x",, "label": "ant"}'])),
    ('line not a JSON object', 'jsonl', _raw(
        'not_object', ['[1, 2]', '"ant"', '42', 'null', 'true'])),
    ('key left out', 'jsonl', _missing_key),
    ('short CSV row', 'csv', _short_row),
    ('several problems in one row', 'csv jsonl', _several),
]
GAP_VARIANTS = [('[gap] image: unreadable', 'csv jsonl',
                 _file('image', 'gap:image_unreadable')),
                ('[gap] audio: unreadable', 'csv jsonl',
                 _file('audio', 'gap:audio_unreadable'))]


# -------------------------------------------------------------- Generator ---
@dataclasses.dataclass
class Plan:
  path: str  # the manifest
  root: str
  rows: int
  bad: dict  # line -> (ident, sorted expected reason kinds, variant name)
  good: dict  # ident -> (line, split or None if hashed, row)
  media: Media
  variants_used: dict  # variant name -> rows


class _Ctx:

  def __init__(self, rng, fmt, media, root):
    self.rng, self.fmt, self.media, self.root = rng, fmt, media, root
    self.good_ids, self.bad_ids, self.no_id_lines = [], [], []
    self.first = {}  # ident -> the line it first appears on

  def pick(self, options):
    return options[int(self.rng.integers(len(options)))]


def _good_row(i, ctx, split=None, label=None):
  rng, fmt = ctx.rng, ctx.fmt
  image = ctx.pick(sorted(ctx.media.images))
  audio = ctx.pick(ctx.media.audio)
  u = rng.random(2)
  if u[0] < 0.03:
    image = os.path.join(ctx.root, image)
  if u[1] < 0.03:
    audio = os.path.join(ctx.root, audio)
  text = ctx.pick([f'example {i}', f'exemple n°{i}, «café»',
                   f'a "quoted", comma, text {i}',
                   f'{i} is a rather long text that the tokenizer cuts at '
                   f'{TEXT_LENGTH} bytes', f'  padded {i}  ', f'two\nlines {i}',
                   f'日本語のテキスト {i}'])
  age = ctx.pick([int(rng.integers(0, 100)), f' {int(rng.integers(0, 100))} ',
                  '1e2', -3.5, '0.25'])
  if fmt == 'csv':
    age = str(age)
  score = round(float(rng.normal()), 4)
  split = split or ('train' if rng.random() < 0.8 else ctx.pick(
      ['validation', 'validation', 'validation', 'validation', 'test', 'test',
       'test', 'test', 'holdout']))
  row = {'id': f'r{i:06d}', 'image': image, 'audio': audio, 'text': text,
         'age': age, 'score': score, 'label': label or ctx.pick(LABELS),
         'split': split}
  if fmt == 'jsonl' and rng.random() < 0.15:
    row['split'] = MISSING  # hashed
  return row


def generate(workdir: str, rows: int, bad_fraction: float, seed: int,
             fmt: str = 'jsonl', gaps: bool = True) -> Plan:
  """Writes the manifest and its files into `workdir` and says what the
  builder must report."""
  rng = np.random.default_rng(seed)
  root = os.path.abspath(workdir)
  for name in ('img', 'snd', 'bad', 'tfds', 'manifest.csv', 'manifest.jsonl'):
    p = os.path.join(root, name)
    if os.path.isdir(p):
      shutil.rmtree(p)
    elif os.path.exists(p):
      os.remove(p)
  os.makedirs(root, exist_ok=True)
  media = make_media(root, rng)
  variants = VARIANTS + (GAP_VARIANTS if gaps else [])
  if gaps:
    add_gaps(root, media)
  kinds_present = {k for k, _ in media.bad}
  variants = [(name, fn) for name, formats, fn in variants
              if fmt in formats.split() and
              getattr(fn, 'file_kind', None) in (None, *kinds_present)]
  ctx = _Ctx(rng, fmt, media, root)
  n_bad = min(int(round(rows * bad_fraction)), max(rows - 10, 0))
  positions = np.sort(rng.choice(np.arange(len(LABELS), rows), n_bad,
                                 replace=False)) if n_bad else []
  order = rng.permutation(n_bad) % len(variants)
  which = dict(zip((int(p) for p in positions), order))

  path = os.path.join(root, f'manifest.{fmt}')
  plan = Plan(path, root, rows, {}, {}, media, {})
  line = 1  # the line the next row starts on
  with open(path, 'w', newline='',
            encoding='utf-8-sig' if fmt == 'csv' else 'utf-8') as f:
    if fmt == 'csv':
      f.write(','.join(FIELDS) + '\n')
      line += 1
    for i in range(rows):
      if i < len(LABELS):  # every class has a train row
        row = _good_row(i, ctx, split='train', label=LABELS[i])
      else:
        row = _good_row(i, ctx)
      bad = i in which
      if not bad and rng.random() < 0.02:
        row['id'] = '' if fmt == 'csv' else ctx.pick([MISSING, None, ''])
      expected = []
      if bad:
        # On one line: for a multi-line CSV row csv.reader gives its last.
        row['text'] = row['text'].replace('\n', ' ')
        name, fn = variants[which[i]]
        expected = sorted(fn(row, ctx))
        plan.variants_used[name] = plan.variants_used.get(name, 0) + 1
      text = _line(row, fmt, ensure_ascii=bool(i % 2))
      end = line + text.count('\n')  # csv.reader's line_num: the last line
      ident = _ident(row, end)
      ctx.first.setdefault(ident, end)
      if bad:
        plan.bad[end] = (ident, expected, name)
        ctx.bad_ids.append(ident)
      else:
        split = row['split']
        plan.good[ident] = (end, None if split is MISSING else split, row)
        if row['id'] in ('', None, MISSING):
          ctx.no_id_lines.append(ident)
        else:
          ctx.good_ids.append(ident)
      f.write(text + '\n')
      line = end + 1
      if rng.random() < 0.003:  # blank lines are skipped, but counted
        f.write('\n')
        line += 1
  return plan


def _line(row, fmt, ensure_ascii=True) -> str:
  if RAW in row:
    return row[RAW]
  if fmt == 'jsonl':
    return json.dumps({k: v for k, v in row.items() if v is not MISSING},
                      ensure_ascii=ensure_ascii)
  cells = [row[k] for k in FIELDS if row[k] is not MISSING]
  out = io.StringIO()
  csv.writer(out, lineterminator='\n').writerow(  # quotes cells with \n
      ['' if v is None else v for v in cells])
  return out.getvalue()[:-1]


def _ident(row, line) -> str:
  ident = row.get('id')
  if ident is MISSING or ident is None or RAW in row:
    return str(line)
  return str(ident).strip() or str(line)


# ------------------------------------------------------------------ Build ---
def overrides(plan: Plan) -> dict:
  return {'path': plan.path, 'image_size': (H, W), 'audio_samples': SAMPLES,
          'sample_rate': RATE, 'text_length': TEXT_LENGTH,
          'skip_bad_rows': True}


def _peak_rss_mib() -> tuple[float, float]:
  """(this process, its waited-for children) peak RSS in MiB (Linux: KiB)."""
  scale = 1 / 1024 if sys.platform != 'darwin' else 1 / 2**20
  return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale,
          resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * scale)


def build(plan: Plan, profile: str | None = None):
  """The dataset, built as `mmfusion.main` builds it: (builder, wall seconds,
  seconds of those in the builder's scan: every row read and checked once,
  before TFDS reads the good ones again to write them)."""
  import ml_collections  # pylint: disable=g-import-not-at-top
  from mmfusion.data import manifest  # pylint: disable=g-import-not-at-top
  from mmfusion.data import pipeline  # pylint: disable=g-import-not-at-top
  data = ml_collections.ConfigDict({
      'name': 'manifest/default', 'data_dir': os.path.join(plan.root, 'tfds'),
      'overrides': overrides(plan)})
  scan, scans = manifest.Manifest._scan, []
  def timed_scan(self):  # only timed: the builder's own method runs
    t = time.perf_counter()
    try:
      return scan(self)
    finally:
      scans.append(time.perf_counter() - t)
  def run():
    builder = pipeline.get_builder(data)
    pipeline.prepare(builder)
    return builder
  manifest.Manifest._scan = timed_scan
  t0 = time.perf_counter()
  try:
    if profile:
      import cProfile  # pylint: disable=g-import-not-at-top
      import pstats  # pylint: disable=g-import-not-at-top
      profiler = cProfile.Profile()
      builder = profiler.runcall(run)
      seconds = time.perf_counter() - t0
      profiler.dump_stats(profile)
      pstats.Stats(profiler).sort_stats('cumulative').print_stats(30)
      pstats.Stats(profiler).sort_stats('tottime').print_stats(20)
    else:
      builder = run()
      seconds = time.perf_counter() - t0
  finally:
    manifest.Manifest._scan = scan
  return builder, seconds, sum(scans)


# ------------------------------------------------------------------ Check ---
Q = r"""(?:'.*'|".*")"""  # a repr()'d string
_PATTERNS = [(kind, re.compile(p)) for kind, p in [
    ('not_json', r'not JSON \(.+\)'),
    ('not_object', r'not a JSON object'),
    ('no_label', r'no label'),
    ('unknown_label', rf"label {Q} is not one of the classes \(.*\)"),
    ('bad_split', rf"split {Q} is not a name like train or test"),
    ('empty_image', r'empty image'),
    ('empty_audio', r'empty audio'),
    ('empty_text', r'empty text'),
    ('image_not_found', rf"image {Q}: file not found"),
    ('image_not_netpbm', rf"image {Q}: not a PGM/PPM file \(magic .*\)"),
    ('image_netpbm_header', rf"image {Q}: truncated Netpbm header"),
    ('image_few_pixels', rf"image {Q}: fewer pixels than its header says"),
    ('image_float_range', rf"image {Q}: float pixels must lie in \[0, 1\]"),
    ('image_dtype', rf"image {Q}: \S+ pixels are not uint8 values"),
    ('image_shape', rf"image {Q}: shape \[[\d, ]*\] is not \[{H}, {W}, 1\]"),
    ('image_needs_pillow', rf"image {Q}: reading \.\w+ needs Pillow.*"),
    ('image_unreadable', rf"image {Q}: unreadable \(.*\)"),
    ('audio_not_found', rf"audio {Q}: file not found"),
    ('audio_not_1d', rf"audio {Q}: a waveform must be 1-D, not \[.*\]"),
    ('audio_format', rf"audio {Q}: .+ is not \.wav, \.npy or \.flac"),
    ('audio_needs_soundfile', rf"audio {Q}: reading \.flac needs soundfile.*"),
    ('audio_unreadable', rf"audio {Q}: unreadable \(.*\)"),
    *[(f'number:{c}', rf"{c} {Q} is not a finite number") for c in NUMERIC],
]]
_DUPLICATE = re.compile(rf"id ({Q}) repeats line (\d+)")
_PART = re.compile(  # '; ' before the start of a problem
    r'; (?=not JSON|not a JSON object|no label|empty |(?:' + '|'.join(
        ('label', 'split', 'image', 'audio', 'id', *NUMERIC)) + r""") ['"])""")


def reason_parts(reason: str) -> list[tuple[str, str]]:
  """(kind, text) of each problem one report line gives ('?' if unknown)."""
  out = []
  for part in _PART.split(reason):
    match = _DUPLICATE.fullmatch(part)
    kind = f'duplicate_id@{match.group(2)}' if match else next(
        (k for k, p in _PATTERNS if p.fullmatch(part)), '?')
    out.append((kind, part))
  return out


def reason_kinds(reason: str) -> list[str]:
  """The kinds of problem one report line gives, sorted."""
  return sorted(k for k, _ in reason_parts(reason))


def read_report(builder) -> list[tuple[int, str, str]]:
  with open(os.path.join(builder.data_dir, 'skipped_rows.tsv'),
            encoding='utf-8') as f:
    lines = f.read().split('\n')
  assert lines[0] == 'line\tid\treason', lines[0]
  assert lines[-1] == '', 'the report does not end in a newline'
  out = []
  for text in lines[1:-1]:
    line, ident, reason = text.split('\t', 2)
    out.append((int(line), ident, reason))
  return out


def check(plan: Plan, builder) -> tuple[list[str], dict]:
  """(problems, figures): the report against plan.bad, the splits against
  plan.good."""
  from mmfusion.data import manifest  # pylint: disable=g-import-not-at-top
  from mmfusion.data import tokenizer  # pylint: disable=g-import-not-at-top
  problems = []
  report = read_report(builder)
  seen = {}
  reasons = {}  # kind -> (rows, an example reason)
  good_lines = {line for line, _, _ in plan.good.values()}
  for line, ident, reason in report:
    if line in seen:
      problems.append(f'line {line} is reported twice')
    seen[line] = True
    parts = reason_parts(reason)
    kinds = sorted(k for k, _ in parts)
    for k in {k.split('@')[0] for k in kinds}:
      rows, example = reasons.get(k, (0, None))
      example = example or next(t for j, t in parts if j.split('@')[0] == k)
      reasons[k] = (rows + 1, example)
    if line not in plan.bad:
      what = 'a good row' if line in good_lines else 'no row'
      problems.append(f'line {line} ({what}) is reported: {reason}')
      continue
    want_ident, want, _ = plan.bad[line]
    if kinds != want:
      problems.append(f'line {line}: reported {kinds} ({reason!r}), '
                      f'expected {want}')
    if ident != want_ident:
      problems.append(f'line {line}: reported id {ident!r}, not {want_ident!r}')
  for line, (_, want, name) in sorted(plan.bad.items()):
    if line not in seen:
      problems.append(f'line {line} ({name}: {want}) is not reported')

  classes = builder.info.features['label'].names
  if classes != sorted(LABELS):
    problems.append(f'classes {classes}, not {sorted(LABELS)}')
  shape = (H, W, 1)
  images = {os.path.join(plan.root, k): v for k, v in plan.media.images.items()}
  audio = {os.path.join(plan.root, p): manifest.read_audio(
      os.path.join(plan.root, p), RATE, SAMPLES) for p in plan.media.audio}
  tok = tokenizer.ByteTokenizer()
  found = {}
  for split in builder.info.splits:
    source = builder.as_data_source(split=split)
    for start in range(0, len(source), 1024):
      for ex in source.__getitems__(range(start, min(start + 1024,
                                                     len(source)))):
        ident = ex['id'].decode()
        if ident in found:
          problems.append(f'id {ident!r} is in {found[ident]} and {split}')
        found[ident] = split
        if ident not in plan.good:
          problems.append(f'{split} holds {ident!r}, not a good row')
          continue
        line, want_split, row = plan.good[ident]
        if want_split is not None and want_split != split:
          problems.append(f'line {line} is in {split}, not {want_split}')
        if want_split is None and split not in ('train', 'validation', 'test'):
          problems.append(f'line {line} (hashed) is in {split}')
        cells = {k: str(row[k]).strip() for k in NUMERIC}
        want_ex = {
            'label': classes.index(row['label']),
            'tabular': np.asarray([float(cells[k]) for k in NUMERIC],
                                  np.float32),
            'text': tok.encode(row['text'].strip(), TEXT_LENGTH)[0],
            'image': images[os.path.join(plan.root, row['image'])],
            'audio': audio[os.path.join(plan.root, row['audio'])]}
        for k, v in want_ex.items():
          if not np.array_equal(ex[k], v):
            problems.append(f'line {line}: {k} differs from the row\'s')
        if ex['image'].shape != shape or not all(ex['present'].values()):
          problems.append(f'line {line}: shape or present wrong')
  missing = sorted(set(plan.good) - set(found), key=lambda i: plan.good[i][0])
  for ident in missing[:50]:
    problems.append(f'good line {plan.good[ident][0]} ({ident!r}) was not '
                    'built')
  if len(missing) > 50:
    problems.append(f'... and {len(missing) - 50} more good rows not built')
  sizes = {s: builder.info.splits[s].num_examples for s in builder.info.splits}
  return problems, {'reasons': reasons, 'splits': sizes,
                    'reported': len(report), 'built': len(found)}


# ----------------------------------------------------------------- Report ---
def machine() -> str:
  cpu = platform.processor() or platform.machine()
  try:
    with open('/proc/cpuinfo') as f:
      cpu = next(l.split(':', 1)[1].strip() for l in f
                 if l.startswith('model name'))
  except (OSError, StopIteration):
    pass
  return f'{os.cpu_count()} CPUs ({cpu}), Python {platform.python_version()}'


def _cpu_seconds() -> float:
  """User + system CPU seconds of this process and its waited-for children."""
  return sum(getattr(resource.getrusage(who), f) for f in ('ru_utime', 'ru_stime')
             for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))


def markdown(plan, fmt, figures, m, command, problems) -> str:
  """The result; `m` holds the measurements that `run_all` takes."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  n_bad = len(plan.bad)
  la = lambda l: ' / '.join(f'{x:.2f}' for x in l)
  lines = [
      f'# `manifest` builder: {plan.rows:,} rows ({fmt.upper()}), '
      f'{n_bad:,} bad',
      '',
      f'    {command}',
      '',
      f'{datetime.date.today().isoformat()}; {machine()}, TFDS '
      f'{tfds.__version__}; load average (1/5/15 min) {la(m["load_before"])} '
      f'before the build, {la(m["load_after"])} after.',
      '',
      '| rows | bad rows | good rows built | build wall s (of it: scan) | '
      'build CPU s | rows/s | peak RSS |',
      '|---|---|---|---|---|---|---|',
      f'| {plan.rows:,} | {n_bad:,} ({n_bad / plan.rows:.1%}) | '
      f'{figures["built"]:,} | {m["seconds"]:.1f} ({m["scan_seconds"]:.1f}) | '
      f'{m["cpu_seconds"]:.1f} | {plan.rows / m["seconds"]:,.0f} | '
      f'{m["rss"][0]:,.0f} MiB |',
      '',
      'The build is `pipeline.get_builder` + `pipeline.prepare`, as in '
      '`mmfusion.main`; the scan is the builder reading and checking every '
      'row once, before TFDS reads the good rows again to write them. Build '
      'CPU s: user + system seconds of this process over the build (its '
      'threads can make it exceed the wall time; other processes on the '
      'cores make the wall time exceed it). Peak RSS: `ru_maxrss` of this '
      'process when the build ends (of its children: '
      f'{m["rss"][1]:,.0f} MiB); before the build (imports, '
      f'generation) it was {m["rss_before"][0]:,.0f} MiB.',
      '',
      'Splits built: ' + ', '.join(f'{s} {n:,}' for s, n in
                                    sorted(figures['splits'].items())) +
      f'. Generating the manifest took {m["gen_seconds"]:.1f} s and checking '
      f'the result {m["check_seconds"]:.1f} s (not in the build time).',
      '',
      'Bad rows by reason, as `skipped_rows.tsv` gives them (a row with '
      'several problems counts under each):',
      '',
      '| reason | rows | an example (one problem of a report line) |',
      '|---|---|---|',
  ]
  for kind, (rows, example) in sorted(figures['reasons'].items()):
    example = example.replace('|', '\\|')
    if len(example) > 110:
      example = example[:107] + '...'
    lines.append(f'| {kind} | {rows:,} | `{example}` |')
  lines += ['', 'Ways of being bad (variants) and their rows: ' + '; '.join(
      f'{name} {n}' for name, n in sorted(plan.variants_used.items())) + '.',
      '']
  if not m.get('gaps'):
    lines += ['Not made (`--gaps` adds them): rows that the builder does not '
              'list but stops the whole build on with a traceback: ' + '; '.join(
                  f'`bad/{name}` ({why})' for _, name, _, why in GAPS) + '.',
              '']
  if problems:
    lines += [f'**FAILED**: {len(problems)} mismatch(es):', '']
    lines += [f'- {p}' for p in problems[:40]]
  else:
    lines.append(
        f'Checked: the report lists all {n_bad:,} bad lines, each with '
        'exactly its expected reasons (a duplicate id: with the line it '
        'repeats) and its id, and no good row; the built splits hold exactly '
        f'the {figures["built"]:,} good rows, each once, in its split, with '
        'its label, numbers, text, image and audio.')
  return '\n'.join(lines) + '\n'


def run_all(workdir, rows, bad_fraction, seed, fmt='jsonl', gaps=True,
            profile=None, command=''):
  """Generates, builds, checks: (markdown, problems)."""
  m = {'gaps': gaps}
  t0 = time.perf_counter()
  plan = generate(workdir, rows, bad_fraction, seed, fmt, gaps)
  m['gen_seconds'] = time.perf_counter() - t0
  m['rss_before'] = _peak_rss_mib()
  m['load_before'] = os.getloadavg()
  cpu = _cpu_seconds()
  builder, m['seconds'], m['scan_seconds'] = build(plan, profile)
  m['cpu_seconds'] = _cpu_seconds() - cpu
  m['rss'] = _peak_rss_mib()
  m['load_after'] = os.getloadavg()
  t0 = time.perf_counter()
  problems, figures = check(plan, builder)
  m['check_seconds'] = time.perf_counter() - t0
  return markdown(plan, fmt, figures, m, command, problems), problems


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  if not cli.WORKDIR.value:
    raise app.UsageError('pass --workdir=DIR')
  command = 'python -m benchmarks.manifest_scale ' + ' '.join(
      shlex.quote(a) for a in sys.argv[1:])
  text, problems = run_all(cli.WORKDIR.value, _ROWS.value, _BAD.value,
                           _SEED.value, _FORMAT.value, _GAPS.value,
                           _PROFILE.value, command)
  print(text)
  if cli.OUT.value:
    with open(cli.OUT.value, 'w') as f:
      f.write(text)
  if problems:
    sys.exit(1)


if __name__ == '__main__':
  app.run(main)
