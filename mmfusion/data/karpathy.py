"""`karpathy_captions`: COCO, Flickr30k or Flickr8k captions in Karpathy's splits.

Karpathy & Fei-Fei (2015, "Deep Visual-Semantic Alignments for Generating
Image Descriptions") published one JSON file per dataset, `dataset_coco.json`,
`dataset_flickr30k.json` and `dataset_flickr8k.json` (caption_datasets.zip),
that fixes which image is in train, val or test; image-text retrieval and
captioning papers report on these splits. The builder reads one of them and
the images it names, both already on disk (nothing is downloaded):

  config.data.name = 'karpathy_captions/default'
  config.data.overrides = {'annotations': '/data/coco/dataset_coco.json',
                           'images_dir': '/data/coco'}

Where the files come from, and their terms:
  JSON splits  Karpathy's caption_datasets.zip (cs.stanford.edu/people/
               karpathy/deepimagesent); its captions are those of the
               datasets below, under their terms
  COCO         train2014.zip and val2014.zip from cocodataset.org; COCO's
               annotations are CC BY 4.0, the images Flickr's terms of use
               (each image keeps its own licence)
  Flickr30k    Young et al. 2014, flickr30k-images from the University of
               Illinois on request, under its own terms (non-commercial
               research) and Flickr's
  Flickr8k     Hodosh et al. 2013, Flicker8k_Dataset, under the same kind of
               terms as Flickr30k

The JSON. `{"images": [...], "dataset": "coco" | "flickr30k" | "flickr8k"}`;
each image is an object with
  filename   'COCO_val2014_000000391895.jpg' or '1000092795.jpg'
  filepath   COCO only: 'train2014' or 'val2014', the image's folder
  imgid      its index in the file (0, 1, ...)
  cocoid     COCO only: the image's COCO id (391895)
  split      'train', 'val', 'test' or (COCO only) 'restval'
  sentids    the ids of its sentences
  sentences  [{'raw': 'A man with a red helmet ...', 'tokens': ['a', 'man',
             ...] (lowercased, no punctuation), 'imgid', 'sentid'}, ...];
             about 5 per image
An image is read at `images_dir/filepath/filename` where it has a filepath
(COCO: the folders train2014/ and val2014/ unpacked side by side), else at
`images_dir/filename` (the unpacked Flickr folder).

Splits: train ('train', and 'restval' while `restval_in_train`, the usual
choice; else a split `restval` of its own), validation ('val') and test
('test'). Karpathy's sizes, in images (train + restval / val / test):
COCO 82,783 + 30,504 / 5,000 / 5,000; Flickr30k 29,000 / 1,014 / 1,000;
Flickr8k 6,000 / 1,000 / 1,000. In train (and restval), `captions='all'`
makes one example per (image, caption) pair and `'first'` one per image with
its first caption; validation and test always have one per image, with its
first caption, so retrieval is scored once per image.

Features:
  image     uint8 [S, S, 3]: the centre square of the image (the shorter
            side kept whole), resized to S with LANCZOS; JPEGs are decoded
            at the smallest DCT scale that still covers S (PIL's draft)
  text      int32 [L]: the example's caption (`caption_text`: 'raw', or
            'tokens' joined by spaces) in `text_tokenizer`'s ids, cut to L
  captions  every reference caption of the image, raw (whitespace
            stripped), in the JSON's order: for captioning metrics
  id        int64: the COCO id (cocoid), else imgid
  sentid    int64: the id of the caption in `text` (-1 where none is given)
  present   {image, text}: True (an image without either is a bad row)

Bad images (missing or unreadable file, no caption, an unknown split, no
filename, an id given twice) are found before anything is written: every
image is opened and decoded once to check it. They stop the build with one
UserError listing them, or with `skip_bad_rows=True` are left out, listed
with their reasons in `skipped_images.tsv` in the dataset's folder and
counted on stdout at every prepare. A progress line (a bar on a terminal)
follows the check. When the JSON file changes (size or time), the next
prepare rebuilds the dataset.
"""

import dataclasses
import functools
import json
import os
import shutil
import sys

import numpy as np
import tensorflow_datasets as tfds

from mmfusion.runtime import errors
from mmfusion.data import manifest
from mmfusion.data import tokenizer

# Karpathy's split name -> the TFDS split (restval: see `split_names`).
SPLITS = {'train': 'train', 'val': 'validation', 'test': 'test',
          'restval': 'train'}
EVAL_SPLITS = ('validation', 'test')  # one example per image
CAPTIONS = ('all', 'first')
CAPTION_TEXT = ('raw', 'tokens')
MODALITIES = ('image', 'text')
REPORT = 'skipped_images.tsv'
FINGERPRINT = 'annotations.fingerprint'
SHOWN = 10  # bad images named in the error; the rest are counted
_UNREADABLE = (OSError, ValueError, SyntaxError, EOFError)  # what PIL raises


@dataclasses.dataclass(eq=False)
class KarpathyConfig(tfds.core.BuilderConfig):
  """Which JSON and images, how captions become examples, and their sizes."""
  annotations: str = ''  # dataset_coco.json, dataset_flickr30k.json, ...
  images_dir: str = ''  # COCO: holds train2014/ and val2014/; Flickr: images
  image_size: int = 64
  text_length: int = 64  # tokens; longer captions are cut
  # 'bytes', or a BERT checkpoint whose WordPiece ids the text becomes.
  text_tokenizer: str = 'bytes'
  caption_text: str = 'raw'  # 'raw' (as written) or 'tokens' (lowercased)
  captions: str = 'all'  # train: 'all' pairs of image and caption, 'first'
  restval_in_train: bool = True  # COCO's restval: train, or a split of its own
  skip_bad_rows: bool = False  # leave bad images out (and report them)


@dataclasses.dataclass(frozen=True)
class Entry:
  """One good image of the JSON: where it is listed and what it holds."""
  index: int  # in the JSON's images list
  id: int
  file: str  # relative to images_dir
  split: str  # the TFDS split
  sentences: tuple  # ((sentid, raw caption, tokens joined), ...)


def check(c: KarpathyConfig):
  """Raises ValueError naming the first field that cannot work, and a
  UserError for a JSON file or images folder that is not there."""
  for field in ('image_size', 'text_length'):
    if not isinstance(getattr(c, field), int) or getattr(c, field) < 1:
      raise ValueError(f'{field} must be a whole number >= 1, not '
                       f'{getattr(c, field)!r}')
  if c.captions not in CAPTIONS:
    raise ValueError(f'captions {c.captions!r} is not one of '
                     f'{", ".join(CAPTIONS)}')
  if c.caption_text not in CAPTION_TEXT:
    raise ValueError(f'caption_text {c.caption_text!r} is not one of '
                     f'{", ".join(CAPTION_TEXT)}')
  for field, what in (('annotations', 'file'), ('images_dir', 'folder')):
    path = os.path.expanduser(getattr(c, field))
    exists = os.path.isfile if what == 'file' else os.path.isdir
    if not path or not exists(path):
      raise errors.UserError(
          f'data.overrides.{field} is {getattr(c, field)!r}, which is no '
          f'{what}; set annotations to Karpathy\'s dataset_coco.json, '
          f'dataset_flickr30k.json or dataset_flickr8k.json and images_dir to '
          f'the folder of its images (with mmfusion/configs/karpathy.py: '
          f'annotations=FILE,images=DIR; see mmfusion/data/karpathy.py).')


def split_names(restval_in_train: bool) -> dict[str, str]:
  """{Karpathy's split: TFDS split}."""
  return {**SPLITS, 'restval': 'train' if restval_in_train else 'restval'}


# ------------------------------------------------------------------- Files ---
def read_json(path: str) -> list:
  """The `images` list of a Karpathy split file; a UserError for a file that
  is not JSON or has no such list."""
  try:
    with open(path, encoding='utf-8') as f:
      data = json.load(f)
  except json.JSONDecodeError as e:
    raise errors.UserError(
        f'{path!r} is not JSON ({e.msg} at line {e.lineno}, column '
        f'{e.colno}); download Karpathy\'s caption_datasets.zip again.'
    ) from None
  except (OSError, UnicodeDecodeError) as e:
    raise errors.UserError(f'cannot read {path!r} ({e}); point '
                           f'data.overrides.annotations at a readable '
                           f'file.') from None
  images = data.get('images') if isinstance(data, dict) else None
  if not isinstance(images, list):
    raise errors.UserError(
        f'{path!r} has no top-level "images" list, so it is not one of '
        f'Karpathy\'s split files; use dataset_coco.json, '
        f'dataset_flickr30k.json or dataset_flickr8k.json.')
  return images


def square_rgb(im, size: int) -> np.ndarray:
  """uint8 [size, size, 3]: the centre square of a PIL image, in RGB,
  resized with LANCZOS."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  rgb = im.convert('RGB')
  w, h = rgb.size
  side = min(w, h)
  left, top = (w - side) // 2, (h - side) // 2
  square = rgb.crop((left, top, left + side, top + side))
  return np.asarray(square.resize((size, size), Image.LANCZOS), np.uint8)


def read_image(path: str, size: int) -> np.ndarray:
  """uint8 [size, size, 3] of an image file (`square_rgb`); a
  manifest.MediaError saying why it cannot be read."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  if not os.path.isfile(path):
    raise manifest.MediaError('file not found')
  try:
    with Image.open(path) as im:
      im.draft('RGB', (size, size))  # JPEG: decode at a reduced scale
      return square_rgb(im, size)
  except (*_UNREADABLE, Image.DecompressionBombError) as e:
    raise manifest.MediaError(f'unreadable ({e})') from None


# ---------------------------------------------------------------- Entries ---
def image_id(image: dict, index: int) -> int:
  """COCO's id where there is one, else imgid, else the index in the file."""
  for key in ('cocoid', 'imgid'):
    if isinstance(image.get(key), int) and not isinstance(image[key], bool):
      return image[key]
  return index


def relative_file(image: dict) -> str:
  """filepath/filename (COCO), or filename (Flickr); '' without filename."""
  name = image.get('filename')
  if not isinstance(name, str) or not name.strip():
    return ''
  folder = image.get('filepath')
  return os.path.join(folder, name) if isinstance(folder, str) and (
      folder) else name


def sentences_of(image: dict) -> tuple:
  """((sentid, raw, tokens joined), ...) of the image's non-empty captions;
  a sentence without `raw` is its tokens joined."""
  sentids = image.get('sentids') if isinstance(image.get('sentids'),
                                               list) else []
  out = []
  for k, s in enumerate(image.get('sentences') or ()):
    if not isinstance(s, dict):
      continue
    tokens = ' '.join(str(t) for t in s.get('tokens') or ())
    raw = s.get('raw')
    raw = raw.strip() if isinstance(raw, str) else tokens
    sentid = s.get('sentid', sentids[k] if k < len(sentids) else -1)
    if raw:
      out.append((sentid if isinstance(sentid, int) else -1, raw,
                  tokens or raw.lower()))
  return tuple(out)


def problems_of(image, index: int, c: KarpathyConfig, images_dir: str,
                splits: dict) -> tuple[Entry | None, list[str]]:
  """(the Entry, []) of a good image, or (None, its problems)."""
  if not isinstance(image, dict):
    return None, ['not a JSON object']
  problems = []
  file = relative_file(image)
  if not file:
    problems.append('no filename')
  split = image.get('split')
  if not isinstance(split, str) or split not in splits:
    problems.append(f'split {split!r} is not one of {", ".join(splits)}')
  sentences = sentences_of(image)
  if not sentences:
    problems.append('no sentences')
  if file:
    try:
      read_image(os.path.join(images_dir, file), c.image_size)
    except manifest.MediaError as e:
      problems.append(str(e))
  if problems:
    return None, problems
  return Entry(index, image_id(image, index), file, splits[split],
               sentences), []


def progress(items, total: int, what: str):
  """`items`, counted by TFDS's progress bar where it is on (a terminal),
  else by a plain line at every tenth."""
  bar = tfds.core.utils.tqdm(total=total, desc=what, unit=' images',
                             file=sys.stdout)
  shown = not isinstance(bar, tfds.core.utils.EmptyTqdm)
  step = max(1, total // 10)
  with bar:
    for n, item in enumerate(items, start=1):
      yield item
      bar.update(1)
      if not shown and (n % step == 0 or n == total):
        print(f'  {what}: {n:,}/{total:,} images', flush=True)


def scan(c: KarpathyConfig):
  """(good Entries in the JSON's order, [(index, id, file, reason)] of the
  bad), every image opened and decoded once."""
  path = os.path.expanduser(c.annotations)
  images_dir = os.path.expanduser(c.images_dir)
  images = read_json(path)
  splits = split_names(c.restval_in_train)
  good, bad, seen = [], [], {}
  for index, image in progress(enumerate(images), len(images),
                               f'checking {os.path.basename(path)}'):
    entry, problems = problems_of(image, index, c, images_dir, splits)
    ident = image_id(image, index) if isinstance(image, dict) else index
    if ident in seen:
      problems.append(f'id {ident} repeats images[{seen[ident]}]')
    seen.setdefault(ident, index)
    if problems:
      file = relative_file(image) if isinstance(image, dict) else ''
      bad.append((index, ident, file, '; '.join(problems)))
    else:
      good.append(entry)
  return good, bad


def examples_of(entry: Entry, c: KarpathyConfig, tok, image_SxSx3):
  """[(key, example)] of one image: one per caption in a training split
  with `captions='all'`, else one with the first caption."""
  every = entry.split not in EVAL_SPLITS and c.captions == 'all'
  chosen = entry.sentences if every else entry.sentences[:1]
  texts = [raw if c.caption_text == 'raw' else tokens
           for _, raw, tokens in chosen]
  ids_NxL = np.asarray(tok.encode(texts, c.text_length), np.int32)
  return [(f'{entry.index}/{k}', {
      'image': image_SxSx3, 'text': ids_NxL[k],
      'captions': [raw for _, raw, _ in entry.sentences],
      'id': entry.id, 'sentid': sentid,
      'present': {m: True for m in MODALITIES}})
          for k, (sentid, _, _) in enumerate(chosen)]


def bad_images_error(path: str, images_dir: str, bad) -> errors.UserError:
  """The one error that lists the bad images (the first SHOWN of them)."""
  listed = '; '.join(f'images[{i}]{" " + file if file else ""} ({why})'
                     for i, _, file, why in bad[:SHOWN])
  more = f' and {len(bad) - SHOWN} more' if len(bad) > SHOWN else ''
  return errors.UserError(
      f'{path!r} lists {len(bad)} bad image(s): {listed}{more}; fix them '
      f'(images are read under images_dir {images_dir!r}, COCO\'s at '
      f'filepath/filename), or set data.overrides.skip_bad_rows=True to '
      f'leave them out (they are then listed in {REPORT} next to the '
      f'dataset).')


def fingerprint(path: str) -> str:
  st = os.stat(os.path.expanduser(path))
  return f'{st.st_size}:{st.st_mtime_ns}'


# ----------------------------------------------------------------- Builder ---
class KarpathyCaptions(tfds.core.GeneratorBasedBuilder):
  """Images and captions of COCO, Flickr30k or Flickr8k, Karpathy's splits."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'First release.'}
  BUILDER_CONFIGS = [KarpathyConfig(
      name='default', description='Set data.overrides.annotations and '
      'images_dir to a Karpathy split JSON and its images.')]

  @functools.cached_property
  def _scan(self):
    return scan(self.builder_config)

  def _info(self):
    c = self.builder_config
    check(c)
    tensor = tfds.features.Tensor
    size = c.image_size
    features = {
        'image': tensor(shape=(size, size, 3), dtype=np.uint8),
        'text': tensor(shape=(c.text_length,), dtype=np.int32),
        'captions': tfds.features.Sequence(tfds.features.Text()),
        'id': tensor(shape=(), dtype=np.int64),
        'sentid': tensor(shape=(), dtype=np.int64),
        'present': {m: tensor(shape=(), dtype=np.bool_) for m in MODALITIES}}
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict(features), supervised_keys=None,
        description=f'Images and captions of {c.annotations} (Karpathy '
        f'splits) under {c.images_dir}; train captions: {c.captions}.')

  def _split_generators(self, dl_manager):
    del dl_manager  # The files are local.
    c = self.builder_config
    good, bad = self._scan
    if bad and not c.skip_bad_rows:
      raise bad_images_error(c.annotations, c.images_dir, bad)
    if not good:
      raise errors.UserError(
          f'{c.annotations!r} lists no usable image ({len(bad)} bad); point data.overrides.annotations at one of Karpathy\'s '
          f'dataset_*.json files and images_dir at its images.')
    with open(os.path.join(self.data_dir, REPORT), 'w') as f:
      f.write('index\tid\tfile\treason\n')
      f.writelines(f'{i}\t{ident}\t{file}\t{why}\n'
                   for i, ident, file, why in bad)
    with open(os.path.join(self.data_dir, FINGERPRINT), 'w') as f:
      f.write(fingerprint(c.annotations))
    order = ('train', 'validation', 'test', 'restval')
    parts = {s: [e for e in good if e.split == s] for s in order}
    return {s: self._generate_examples(part) for s, part in parts.items()
            if part}

  def _generate_examples(self, entries):
    c = self.builder_config
    tok = tokenizer.for_text(c.text_tokenizer)
    images_dir = os.path.expanduser(c.images_dir)
    for entry in entries:
      image = read_image(os.path.join(images_dir, entry.file), c.image_size)
      yield from examples_of(entry, c, tok, image)

  def _build_data_dir(self, given_data_dir):
    """TFDS's dataset folder, emptied first when the JSON file has changed
    since it was built (TFDS then builds afresh instead of reusing it)."""
    root, data_dir = super()._build_data_dir(given_data_dir)
    stamp = os.path.join(data_dir, FINGERPRINT)
    path = self.builder_config.annotations
    if os.path.exists(stamp) and os.path.isfile(os.path.expanduser(path)):
      with open(stamp) as f:
        if f.read() != fingerprint(path):
          print(f'{path} changed since {data_dir} was built; rebuilding.',
                flush=True)
          shutil.rmtree(data_dir)
    return root, data_dir

  def download_and_prepare(self, **kwargs):  # pylint: disable=arguments-differ
    """Builds once; then, every time, says how many images were skipped."""
    super().download_and_prepare(**kwargs)
    report = os.path.join(self.data_dir, REPORT)
    with open(report) as f:
      skipped = len(f.readlines()) - 1
    if skipped:
      print(f'{skipped} bad image(s) of {self.builder_config.annotations} '
            f'were skipped; see {report}.', flush=True)
