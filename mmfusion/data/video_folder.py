"""`video_folder`: a folder of video clips and the CSV that labels them.

For Kinetics- and VGGSound-style data as their downloaders leave it, or any
clips listed with their class:

  config.data.name = 'video_folder/default'
  config.data.modalities = ('video', 'audio')
  config.data.overrides = {'folder': '/data/kinetics400/clips',
                           'csv': ('/data/kinetics400/train.csv',
                                   '/data/kinetics400/validate.csv')}

A CSV file (`csv`: one path or several) has one of three layouts; `layout`
'auto' tells them apart by the first line:
  paths     a header with `path` and `label`, optionally `start`, `end`
            (seconds of the clip to read; empty: its start, its end) and
            `split`; `path` is the clip's file, relative to `folder`.
  kinetics  Kinetics' annotations (train.csv, validate.csv, ...): a header
            `label,youtube_id,time_start,time_end,split` (more columns, such
            as is_cc, are ignored). The clip is `clip_name` formatted with
            youtube_id, start and end (whole seconds), by default
            KINETICS_NAME ('abc_000014_000024.mp4'), the name the ActivityNet
            downloader gives a clip.
  vggsound  VGGSound's vggsound.csv: no header, rows
            `youtube_id,start_seconds,label,split`; the clip is `clip_name`
            formatted with youtube_id, start and end (start + 10), by
            default VGGSOUND_NAME ('abc_000030.mp4').
A Kinetics or VGGSound clip is found anywhere under `folder` (in label or
split subfolders too) unless `clip_name` holds a '/', and read whole: its
times are those of the YouTube video it was cut from.

Features:
  video    uint8 [T, H, W, 3]: `frames` RGB frames sampled uniformly in time,
           scaled to `size` as `crop` says (`video.read_video`)
  audio    float32 [S]: the clip's sound at `sample_rate`, cut or
           zero-padded to `audio_samples` (`video.read_audio_track`); not
           there with `with_audio=False`
  present  {video, audio}: audio is False for a clip without sound (zeros),
           or such a clip is a bad row with `allow_silent=False`
  label    ClassLabel: `labels`, or else the train rows' classes, sorted
  id       the `path` cell, or the clip's file name without extension

Splits: the CSV's `split` column ('val' and 'validate' are `validation`); a
CSV without one sends its rows by a hash of their id to train/validation/
test (`split_fractions`). When the CSVs name no validation (or no test) rows,
as VGGSound's train/test, the train rows whose id hashes below
split_fractions[1] (or in the next split_fractions[2]) become them.

Bad rows (a clip not found, undecodable or without frames, a missing or
unknown label, bad times, a duplicate id, a short row) stop the build with
one UserError naming their file, line and reason, before any clip is read
in full: every clip is opened and its first frame decoded first (a progress
bar counts them, and another the clips decoded). With `skip_bad_rows=True`
they are left out instead, listed in `skipped_rows.tsv` in the dataset's
folder (with a clip that fails later on) and counted on stdout at every
prepare. The classes are those of the train rows whose clip is there. When a
CSV or a clip changes (size or time), the next prepare rebuilds the dataset.
"""

import csv
import dataclasses
import functools
import hashlib
import itertools
import math
import os
import re
import shutil

import numpy as np
import tensorflow_datasets as tfds

from mmfusion.data import manifest
from mmfusion.data import video
from mmfusion.runtime import errors
from mmfusion.runtime import progress

LAYOUTS = ('auto', 'paths', 'kinetics', 'vggsound')
KINETICS_NAME = '{youtube_id}_{start:06d}_{end:06d}.mp4'
VGGSOUND_NAME = '{youtube_id}_{start:06d}.mp4'
VGGSOUND_SECONDS = 10  # every VGGSound clip is 10 s from its start
KINETICS_COLUMNS = ('youtube_id', 'time_start', 'time_end')
SPLIT_NAMES = {'val': 'validation', 'validate': 'validation'}
# What `clip_name` may name, with a value of each field's kind.
NAME_FIELDS = {'youtube_id': 'id', 'start': 0, 'end': 10, 'label': 'a',
               'split': 'train'}
REPORT = 'skipped_rows.tsv'
FINGERPRINT = 'video_folder.fingerprint'


@dataclasses.dataclass(eq=False)
class VideoFolderConfig(tfds.core.BuilderConfig):
  """Where the clips and their CSV are, and the shapes they take."""
  folder: str = ''  # the clips; '': the first CSV's folder
  csv: tuple[str, ...] = ()  # the CSV file(s), or one path
  layout: str = 'auto'  # 'auto', 'paths', 'kinetics' or 'vggsound'
  clip_name: str = ''  # '': the layout's (KINETICS_NAME, VGGSOUND_NAME)
  frames: int = 16
  size: tuple[int, int] = (64, 64)  # H x W
  crop: str = 'center'  # 'center', 'resize' or 'pad' (video.CROPS)
  with_audio: bool = True  # False: no audio feature (and faster builds)
  sample_rate: int = 16_000
  audio_samples: int = 160_000  # 10 s, a whole Kinetics or VGGSound clip
  allow_silent: bool = True  # a clip without sound: present/audio False
  labels: tuple[str, ...] = ()  # (): the train rows' classes, sorted
  split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
  skip_bad_rows: bool = False  # leave bad rows out (and report them)


@dataclasses.dataclass(frozen=True)
class Clip:
  """One good row: where it was listed, its clip and what to read of it."""
  csv: str
  line: int
  id: str
  path: str
  label: str
  split: str
  start: float | None = None
  end: float | None = None


def csv_paths(c: VideoFolderConfig) -> list[str]:
  """The absolute paths of `c.csv` (one path or several)."""
  paths = [c.csv] if isinstance(c.csv, str) else list(c.csv)
  return [os.path.abspath(os.path.expanduser(p)) for p in paths if p]


def check(c: VideoFolderConfig):
  """Raises ValueError naming the first field that cannot work."""
  if not csv_paths(c):
    raise ValueError("it needs its CSV: set data.overrides={'csv': "
                     "'/abs/path/clips.csv', 'folder': '/abs/path/clips'}")
  for field in ('frames', 'sample_rate', 'audio_samples'):
    if not isinstance(getattr(c, field), int) or getattr(c, field) < 1:
      raise ValueError(f'{field} must be a whole number >= 1, not '
                       f'{getattr(c, field)!r}')
  size = tuple(c.size)
  if len(size) != 2 or not all(isinstance(n, int) and n >= 1 for n in size):
    raise ValueError(f'size {c.size!r} must be two whole numbers (H, W)')
  if c.crop not in video.CROPS:
    raise ValueError(f'crop {c.crop!r} is not one of {", ".join(video.CROPS)}')
  if c.layout not in LAYOUTS:
    raise ValueError(f'layout {c.layout!r} is not one of {", ".join(LAYOUTS)}')
  fractions = tuple(c.split_fractions)
  if (len(fractions) != 3 or min(fractions) < 0 or
      abs(sum(fractions) - 1) > 1e-6):
    raise ValueError(f'split_fractions {list(fractions)} must be 3 '
                     f'non-negative numbers (train, validation, test) '
                     f'summing to 1')
  try:
    c.clip_name.format(**NAME_FIELDS)
  except (KeyError, IndexError, ValueError) as e:
    raise ValueError(f'clip_name {c.clip_name!r} cannot be formed ({e!r}); '
                     f'its fields are {", ".join(NAME_FIELDS)}, e.g. '
                     f'{KINETICS_NAME!r}') from None


def _number(text: str) -> float | None:
  """The finite number a cell holds, or None."""
  try:
    x = float(text)
  except ValueError:
    return None
  return x if math.isfinite(x) else None


def _unit(ident: str) -> float:
  """A number in [0, 1) fixed by `ident`."""
  return int.from_bytes(hashlib.sha1(ident.encode()).digest()[:8],
                        'big') / 2**64


def hashed_split(ident: str, fractions) -> str:
  """train, validation or test, from a hash of the id (as the manifest)."""
  u, (train, validation, _) = _unit(ident), fractions
  return ('train' if u < train else 'validation'
          if u < train + validation else 'test')


# ---------------------------------------------------------------- CSV rows ---
def detect_layout(first_row: list[str]) -> str | None:
  """The layout whose first line `first_row` (its cells) is, or None."""
  cells = [x.strip() for x in first_row]
  if 'path' in cells and 'label' in cells:
    return 'paths'
  if set(KINETICS_COLUMNS) <= set(cells):
    return 'kinetics'
  if len(cells) == 4 and _number(cells[1]) is not None:
    return 'vggsound'
  return None


def read_csv(path: str, layout: str):
  """(layout, [(line, {key: cell} or {'__error__': why})]) of one CSV; keys
  are path or youtube_id, label, split, start, end (those it has)."""
  if not os.path.isfile(path):
    raise errors.UserError(f'no CSV file at {path!r}; pass an existing file '
                           f'as data.overrides.csv.')
  with open(path, newline='', encoding='utf-8-sig') as f:
    reader = csv.reader(f)
    first = next(reader, [])
    found = detect_layout(first) if layout == 'auto' else layout
    if found is None:
      raise errors.UserError(
          f'the CSV {path!r} starts with {",".join(first)!r}, which is none '
          f'of the layouts: a header path,label[,start,end][,split]; '
          f"Kinetics' label,youtube_id,time_start,time_end,split; or "
          f"VGGSound's rows youtube_id,start_seconds,label,split; fix it or "
          f'set data.overrides.layout.')
    if found == 'vggsound':
      rows = [(1, _vggsound_row(first))] if first else []
      rows += [(reader.line_num, _vggsound_row(r)) for r in reader if r]
      return found, rows
    header = [x.strip() for x in first]
    need = ('path',) if found == 'paths' else KINETICS_COLUMNS
    missing = [k for k in need + ('label',) if k not in header]
    if missing:
      unlabelled = " (Kinetics' test.csv is unlabelled: leave it out)" if (
          found == 'kinetics' and missing == ['label']) else ''
      raise errors.UserError(
          f'the CSV {path!r} has no {", ".join(missing)} column{unlabelled}; '
          f'its {found} layout needs {", ".join(need + ("label",))} (columns '
          f'found: {", ".join(header)}).')
    rename = {'time_start': 'start', 'time_end': 'end'} if (
        found == 'kinetics') else {}
    rows = []
    for cells in reader:
      if not any(x.strip() for x in cells):
        continue
      if len(cells) > len(header):
        rows.append((reader.line_num, {'__error__': (
            f'{len(cells) - len(header)} more cells than the header\'s '
            f'{len(header)} columns')}))
        continue
      rows.append((reader.line_num, {rename.get(k, k): v.strip()
                                     for k, v in zip(header, cells)}))
    return found, rows


def _vggsound_row(cells):
  if len(cells) != 4:
    return {'__error__': f'{len(cells)} cells, not 4 (youtube_id, '
                         f'start_seconds, label, split)'}
  ytid, start, label, split = (x.strip() for x in cells)
  return {'youtube_id': ytid, 'start': start, 'label': label, 'split': split}


def _seconds(text: str, key: str, problems) -> float | None:
  """The number of seconds a cell holds (None when empty)."""
  if not text:
    return None
  x = _number(text)
  if x is None or x < 0:
    problems.append(f'{key} {text!r} is not a number of seconds')
    return None
  return x


def clip_file(c: VideoFolderConfig, layout: str, cells: dict, folder: str,
              find, problems) -> tuple[str, str]:
  """(id, path) of a row's clip ('' where it is not found: a problem)."""
  if layout == 'paths':
    cell = cells.get('path', '')
    if not cell:
      problems.append('no path')
      return '', ''
    path = os.path.join(folder, os.path.expanduser(cell))
    if not os.path.isfile(path):
      problems.append(f'clip {cell!r}: file not found')
      return cell, ''
    return cell, path
  template = c.clip_name or (KINETICS_NAME if layout == 'kinetics' else
                             VGGSOUND_NAME)
  start = _seconds(cells.get('start', ''), 'start', problems)
  end = start + VGGSOUND_SECONDS if (
      layout == 'vggsound' and start is not None) else _seconds(
          cells.get('end', ''), 'end', problems)
  whole = {k: int(v) if v is not None and float(v).is_integer() else v
           for k, v in (('start', start), ('end', end))}
  try:
    name = template.format(youtube_id=cells.get('youtube_id', ''),
                           label=cells.get('label', ''),
                           split=cells.get('split', ''), **whole)
  except (ValueError, TypeError) as e:  # e.g. 14.5 s for {start:06d}
    problems.append(f'its times ({whole["start"]}, {whole["end"]}) do not '
                    f'fit the clip name {template!r} ({e})')
    return cells.get('youtube_id', ''), ''
  ident = os.path.splitext(os.path.basename(name))[0]
  path = os.path.join(folder, name) if '/' in name else find(name)
  if not path or not os.path.isfile(path):
    problems.append(f'clip {name!r} not found under {folder}')
    return ident, ''
  return ident, path


def file_index(folder: str) -> dict[str, str]:
  """{file name: path} of every file under `folder` (hidden ones skipped;
  the first in sorted order where a name repeats)."""
  index = {}
  for root, dirs, files in os.walk(folder):
    dirs[:] = sorted(d for d in dirs if not d.startswith('.'))
    for f in sorted(files):
      if not f.startswith('.'):
        index.setdefault(f, os.path.join(root, f))
  return index


# ------------------------------------------------------------------- Table ---
@dataclasses.dataclass
class Table:
  """The rows of the CSVs: good clips, bad rows and the classes."""
  clips: list  # [Clip]
  bad: list  # [(csv file name, line, id, reason)]
  classes: list  # [str]
  folder: str
  files: list  # the CSVs' file names, in order

  def order(self, bad_row) -> tuple[int, int]:
    """Sort key of a bad row: its CSV (in the config's order), its line."""
    name, line = bad_row[:2]
    return (self.files.index(name) if name in self.files else 0, line)


def read_table(c: VideoFolderConfig) -> Table:
  """Reads every CSV row and checks what needs no decoding."""
  check(c)
  paths = csv_paths(c)
  folder = os.path.abspath(os.path.expanduser(c.folder or os.path.dirname(
      paths[0])))
  if not os.path.isdir(folder):
    raise errors.UserError(f'there is no folder {folder!r} of clips; set '
                           f'data.overrides.folder to the folder holding '
                           f'them.')
  listing = functools.cache(lambda: file_index(folder))  # when first asked
  find = lambda name: listing().get(name, '')
  drafts, bad, seen = [], [], {}
  for path in paths:
    layout, rows = read_csv(path, c.layout)
    name = os.path.basename(path)
    for line, cells in rows:
      if '__error__' in cells:
        bad.append((name, line, str(line), cells['__error__']))
        continue
      problems = []
      ident, clip = clip_file(c, layout, cells, folder, find, problems)
      ident = ident or str(line)
      if ident in seen:
        problems.append(f'id {ident!r} repeats {seen[ident]}')
      seen.setdefault(ident, f'{name} line {line}')
      split = cells.get('split', '')
      split = SPLIT_NAMES.get(split, split) if split else hashed_split(
          ident, c.split_fractions)
      if not re.fullmatch(r'[A-Za-z]\w*', split):
        problems.append(f'split {split!r} is not a name like train or test')
      if not cells.get('label'):
        problems.append('no label')
      window = (None, None)
      if layout == 'paths':
        window = tuple(_seconds(cells.get(k, ''), k, problems)
                       for k in ('start', 'end'))
      drafts.append((Clip(name, line, ident, clip, cells.get('label', ''),
                          split, *window), problems))
  clips = [clip for clip, problems in drafts if not problems]
  bad += [(d.csv, d.line, d.id, '; '.join(p)) for d, p in drafts if p]
  clips = carve_splits(clips, c.split_fractions)
  classes = [str(x) for x in c.labels] or manifest.sort_labels(
      {d.label for d in clips if d.split == 'train'})
  if not classes:
    raise errors.UserError(
        f'the CSV(s) {", ".join(paths)} have no train rows with a label '
        f'and a clip; fix them, or list the classes in data.overrides.labels.')
  known = set(classes)
  preview = ', '.join(classes[:10]) + (', ...' if len(classes) > 10 else '')
  bad += [(d.csv, d.line, d.id, f'label {d.label!r} is not one of the '
           f'classes ({preview})') for d in clips if d.label not in known]
  clips = [d for d in clips if d.label in known]
  table = Table(clips, bad, classes, folder,
                [os.path.basename(p) for p in paths])
  table.bad.sort(key=table.order)
  return table


def carve_splits(clips, fractions) -> list:
  """`clips`, with validation (test) drawn from train by the hash of the id
  when no clip is in validation (test): see the module docstring."""
  have = {d.split for d in clips}
  lo = {'validation': 0.0, 'test': fractions[1]}
  width = {'validation': fractions[1], 'test': fractions[2]}
  out = []
  for d in clips:
    if d.split == 'train':
      u = _unit(d.id)
      for s in ('validation', 'test'):
        if s not in have and lo[s] <= u < lo[s] + width[s]:
          d = dataclasses.replace(d, split=s)
    out.append(d)
  return out


# ----------------------------------------------------------------- Builder ---
def clip_example(c: VideoFolderConfig, clip: Clip, classes) -> dict:
  """The example of one clip; MediaError when it cannot be decoded."""
  ex = {'video': video.read_video(clip.path, frames=c.frames, size=c.size,
                                  start=clip.start, end=clip.end,
                                  crop=c.crop),
        'present': {'video': True}, 'label': classes.index(clip.label),
        'id': clip.id}
  if c.with_audio:
    try:
      ex['audio'] = video.read_audio_track(
          clip.path, sample_rate=c.sample_rate, samples=c.audio_samples,
          start=clip.start, end=clip.end)
      ex['present']['audio'] = True
    except video.NoAudioTrack:
      if not c.allow_silent:
        raise
      ex['audio'] = np.zeros(c.audio_samples, np.float32)
      ex['present']['audio'] = False
  return ex


@dataclasses.dataclass
class _Progress:
  """What the split generators of one build share."""
  tally: progress.Tally
  pending: set  # splits not yet generated to their end
  bad: list  # as Table.bad, and the clips that failed while decoded
  done: itertools.count = dataclasses.field(
      default_factory=lambda: itertools.count(1))


def check_clips(clips) -> list:
  """[None, or (file, line, id, reason) of a clip that does not start to
  decode] of every clip, with a progress bar."""
  tally, out = progress.Tally(len(clips), 'clips checked'), []
  for n, clip in enumerate(clips, start=1):
    try:
      video.probe_video(clip.path)
      out.append(None)
    except video.MediaError as e:
      out.append((clip.csv, clip.line, clip.id, f'clip: {e}'))
    tally.update(n)
  return out


def _listed(bad, limit: int = 20) -> str:
  shown = '; '.join(f'{f} line {n} ({why})' for f, n, _, why in bad[:limit])
  return shown + (f'; and {len(bad) - limit} more' if len(bad) > limit else
                  '')


class VideoFolder(tfds.core.GeneratorBasedBuilder):
  """Video clips (and their sound) listed with their class in CSV files."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'First release.'}
  BUILDER_CONFIGS = [VideoFolderConfig(
      name='default', description='Set data.overrides.csv (and folder).')]

  @functools.cached_property
  def _table(self) -> Table:
    return read_table(self.builder_config)

  def _info(self):
    c, table = self.builder_config, self._table  # the table checks c
    tensor = tfds.features.Tensor
    modalities = ('video', 'audio') if c.with_audio else ('video',)
    features = {
        'video': tensor(shape=(c.frames, *c.size, 3), dtype=np.uint8),
        'present': {m: tensor(shape=(), dtype=np.bool_) for m in modalities},
        'label': tfds.features.ClassLabel(names=table.classes),
        'id': tfds.features.Text()}
    if c.with_audio:
      features['audio'] = tensor(shape=(c.audio_samples,), dtype=np.float32)
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict(features), supervised_keys=None,
        description=f'Clips of {table.folder} listed in '
        f'{", ".join(csv_paths(c))}.')

  def fingerprint(self) -> str:
    """Digest of the CSVs and the size and time of every clip they name."""
    h = hashlib.sha1()
    for path in csv_paths(self.builder_config):
      with open(path, 'rb') as f:
        h.update(f.read())
    for clip in self._table.clips:
      try:
        st = os.stat(clip.path)
        h.update(f'{clip.path}:{st.st_size}:{st.st_mtime_ns}'.encode())
      except OSError:
        h.update(f'{clip.path}:missing'.encode())
    return h.hexdigest()

  def _split_generators(self, dl_manager):
    del dl_manager  # The files are local.
    c, table = self.builder_config, self._table
    checked, bad = check_clips(table.clips), list(table.bad)
    bad += [b for b in checked if b is not None]
    if bad and not c.skip_bad_rows:
      raise errors.UserError(
          f'the CSV rows of {table.folder} have {len(bad)} bad row(s): '
          f'{_listed(sorted(bad, key=table.order))}; fix them, or set '
          f'data.overrides.skip_bad_rows=True to leave them out (listed in '
          f'{REPORT} next to the dataset).')
    parts = {}
    for clip, problem in zip(table.clips, checked):
      if problem is None:
        parts.setdefault(clip.split, []).append(clip)
    self._progress = _Progress(
        progress.Tally(sum(map(len, parts.values())), 'clips decoded'),
        set(parts), bad)
    return {s: self._generate_examples(s, clips)
            for s, clips in sorted(parts.items())}

  def _generate_examples(self, split, clips):
    c, table, state = self.builder_config, self._table, self._progress
    built = 0
    for clip in clips:
      try:
        ex = clip_example(c, clip, table.classes)
      except video.MediaError as e:  # past its first frame: rare
        if not c.skip_bad_rows:
          raise errors.UserError(
              f'the clip {clip.path!r} ({clip.csv} line {clip.line}) cannot '
              f'be decoded: {e}; replace it, or set data.overrides.'
              f'skip_bad_rows=True to leave it out.') from None
        state.bad.append((clip.csv, clip.line, clip.id, f'clip: {e}'))
        ex = None
      state.tally.update(next(state.done))
      if ex is not None:
        built += 1
        yield clip.id, ex
    if not built:
      raise errors.UserError(
          f'no clip of the {split} split decodes (see {REPORT}); fix them or '
          f'leave the split out.')
    state.pending.discard(split)
    if not state.pending:  # the last clip of the last split
      self._finish(state.bad)

  def _finish(self, bad):
    """Writes the report of bad rows and the fingerprint of the build."""
    with open(os.path.join(self.data_dir, REPORT), 'w') as f:
      f.write('file\tline\tid\treason\n')
      f.writelines(f'{n}\t{line}\t{i}\t{why}\n'
                   for n, line, i, why in sorted(bad, key=self._table.order))
    with open(os.path.join(self.data_dir, FINGERPRINT), 'w') as f:
      f.write(self.fingerprint())

  def _build_data_dir(self, given_data_dir):
    """TFDS's dataset folder, emptied first when a CSV or clip has changed
    since it was built (TFDS then builds afresh instead of reusing it)."""
    root, data_dir = super()._build_data_dir(given_data_dir)
    stamp = os.path.join(data_dir, FINGERPRINT)
    if os.path.exists(stamp):
      with open(stamp) as f:
        if f.read() != self.fingerprint():
          print(f'A CSV or clip changed since {data_dir} was built; '
                f'rebuilding.', flush=True)
          shutil.rmtree(data_dir)
    return root, data_dir

  def download_and_prepare(self, **kwargs):  # pylint: disable=arguments-differ
    """Builds once; then, every time, says how many rows were skipped."""
    super().download_and_prepare(**kwargs)
    report = os.path.join(self.data_dir, REPORT)
    with open(report) as f:
      skipped = len(f.readlines()) - 1
    if skipped:
      print(f'{skipped} bad row(s) were skipped; see {report}.', flush=True)
