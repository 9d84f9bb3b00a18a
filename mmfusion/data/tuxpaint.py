"""`tuxpaint`: Debian's `tuxpaint-stamps-default` (2022.06.04, GPL-2) on disk.

Tux Paint's stamps are clip art, each with a caption in English and up to 75
translations, and recordings made by people, not synthesizers: spoken
descriptions in 14 languages, and spoken names of letters and digits.
Two things read them here:

  * the `tuxpaint` builder: one example per stamp (image, caption, speech),
    labelled by its category, e.g. for classification from image + caption
    + speech (mmfusion/configs/tuxpaint.py);
  * av_digits' `test_speech_shift` split (`spoken_digits`): in
    `symbols/math`, `N.ogg` and `N_en_GB.ogg` are two human English voices
    saying the digit N (an American one at 11,025 Hz and a British one at
    44,100 Hz).

The package is 160 MB, so nothing fetches it for you at run time; get it
once with

  make tuxpaint        # apt-get download + dpkg -x into TUXPAINT_DIR

which unpacks it into `~/.cache/mmfusion/tuxpaint` (DEFAULT_DIR). Any of
these paths works where a stamps folder is asked for: the folder `dpkg -x`
unpacked into, an installed `/usr/share/tuxpaint/stamps`, or a copy of
either in the same layout. OGG Vorbis is decoded by `soundfile`
(libsndfile, whose wheels ship their own codecs).

Layout. The stamps folder holds 16 category folders (animals, clothes, food,
hobbies, household, medical, military, naturalforces, people, plants,
seasonal, space, sports, symbols, town, vehicles) with subfolders of any
depth (`animals/mammals/bears/cartoon`). A stamp is a base name NAME in one
folder, e.g. `animals/amphibians/frog`:
  NAME.png, NAME.svg       the picture (PNG, SVG or both; some are SVG only)
  NAME.txt                 line 1 the English caption ("A frog."), then lines
                           `<locale>.utf8=<translation>` (fr, pt_BR, sr@latin)
  NAME.dat                 Tux Paint's options (colorable, ...): not read
  NAME.ogg                 the sound played on choosing it: a sound effect
                           (a croak), or for letters and digits the name
                           spoken by an American voice
  NAME_<lang>.ogg          the name spoken in <lang> (en_GB, fr, ...; letters
                           and digits only)
  NAME_desc.ogg            the description (the caption) read aloud in English
  NAME_desc_<lang>.ogg     ... in <lang> (fr, ru, ro, ca, bg, es, be, el, da,
                           lt, nl, ml; pt_BR as .wav)

The builder. One example per stamp that has a PNG; an SVG-only stamp is not
rasterized but skipped, listed with its reason in `skipped_stamps.tsv` in
the dataset's folder, counted in the dataset's description and on stdout at
every prepare. Features:
  image        uint8 [S, S, 3]: the PNG composited on white, padded to a
               square with white (aspect kept), resized with LANCZOS
  text         int32 [L]: the caption in `text_locale`, as byte tokens
               ('en': line 1; 'fr': the `fr.utf8=` line; 'random': a locale
               drawn per example, seeded, from 'en' and the stamp's others)
  audio        float32 [A]: the recording (`audio`: 'desc' the spoken
               description, 'name' the spoken name, 'sound' NAME.ogg) in
               `audio_lang` at `sample_rate`, cut or zero-padded
  present      {image, text, audio}: bool, False where the stamp lacks the
               caption in that locale or the recording in that language
               (the array is then zeros)
  label        ClassLabel: the category (top folder), names sorted
  subcategory  ClassLabel: `category/sub` (its first two folders; just
               `category` for a stamp at the top of one), names sorted
  id           the stamp's path without extension ('animals/amphibians/frog')
  locale       the locale of `text` ('' where absent)
English recordings ('en'): for 'desc' `NAME_desc.ogg`, else
`NAME_desc_en.ogg` or `NAME_desc_en_XX.ogg` (the package has only the
first); for 'name' `NAME_en.ogg` or `NAME_en_XX.ogg` (the package's are
en_GB). Another language L: `NAME_desc_L.ogg` / `NAME_L.ogg`, else its
regional variants `L_XX`; .ogg before .wav.

Splits: by stamp, from a SHA-1 hash of its id (not of `seed`): 70/10/20%
train/validation/test (`split_fractions`), so a stamp stays in its split
whatever the other settings. Every field of `TuxpaintConfig` can be
overridden (`data.overrides`). Building twice gives identical examples.
A damaged PNG, OGG or .txt stops the build with one UserError naming it.

Counts in the package, measured by building it (image_size 32, 24 s on two
busy CPU cores with English speech): 961 stamps; 165 SVG-only ones skipped;
796 examples, train/validation/test 551/83/162, in 16 categories (symbols
247, 158 of them letters and signs of alphabets; animals 146; ...;
naturalforces 3) and 73 subcategories. Of those, present (per split) in:
  English caption        785 (545/80/160; 11 stamps have no .txt)
  other captions         fr, de, es, ja, pt_BR 785 each; ~65 locales a stamp
  English description     65 (47/5/13): audio_lang='en' leaves most absent
  and, counted with `recording` rather than built:
  French description     767 (533/79/155); ru, ro 760, ca, bg 757, es 741,
                         el 646, be 538, da 290, lt 88, nl 67, pt_BR 15, ml 6
  English name           114 (75/13/26: the en_GB letters and digits)
  sound ('sound')        131
Descriptions last about 1 s; 3 s (`audio_samples`) holds all the English ones
and 95% of the French whole, and 64 bytes 97% of the English captions.
"""

import dataclasses
import functools
import hashlib
import itertools
import os
import re

import numpy as np
import tensorflow_datasets as tfds

from mmfusion.runtime import errors
from mmfusion.runtime import progress
from mmfusion.data import manifest
from mmfusion.data import speech
from mmfusion.data import tokenizer

DEFAULT_DIR = '~/.cache/mmfusion/tuxpaint'  # `make tuxpaint` unpacks here
STAMPS = os.path.join('usr', 'share', 'tuxpaint', 'stamps')
# voice name -> file of digit N in symbols/math
DIGIT_VOICES = {'tuxpaint/en': '{}.ogg', 'tuxpaint/en_GB': '{}_en_GB.ogg'}
MODALITIES = ('image', 'text', 'audio')
SPLITS = ('train', 'validation', 'test')
AUDIO = ('desc', 'name', 'sound')
REPORT = 'skipped_stamps.tsv'
SOUND_EXTS = ('.ogg', '.wav')  # in this order of preference
# A language tag as the package writes them: fr, pt_BR, zh_tw, sr@latin.
_TAG = r'[a-z]{2,3}(_[A-Za-z]{2,4})?(@[a-z]+)?'


def stamps_dir(path: str) -> str:
  """The stamps folder (holding `symbols/`, `animals/`, ...) at or under
  `path`; a UserError saying how to get it when there is none."""
  path = os.path.expanduser(path)
  for candidate in (os.path.join(path, STAMPS), path):
    if os.path.isdir(os.path.join(candidate, 'symbols')):
      return candidate
  raise errors.UserError(
      f'{path!r} holds no Tux Paint stamps (no symbols/ folder in it or in '
      f'its {STAMPS}); run `make tuxpaint` to unpack tuxpaint-stamps-default '
      f'into {DEFAULT_DIR}, or point at an unpacked copy of the package.')


def read_ogg(path: str, rate: int) -> np.ndarray:
  """float32 [S] mono samples of an OGG file at `rate` Hz."""
  import soundfile  # pylint: disable=g-import-not-at-top
  try:
    x, source_rate = soundfile.read(path, dtype='float32', always_2d=True)
  except (soundfile.LibsndfileError, RuntimeError) as e:
    raise errors.UserError(f'cannot decode {path!r} ({e}); the file is '
                           f'damaged: unpack the package again.') from None
  x = x.mean(axis=1)
  return x if source_rate == rate else speech.resample(
      [x], source_rate, rate)[0]


def spoken_digits(path: str, rate: int):
  """(voice names [V], waves [V][10]): each human voice saying 0-9, float32
  at `rate` Hz, trimmed and scaled to peak 1 as av_digits' eSpeak words are.
  A missing file is a UserError naming every one that is missing."""
  folder = os.path.join(stamps_dir(path), 'symbols', 'math')
  files = {v: [os.path.join(folder, f.format(d)) for d in range(10)]
           for v, f in DIGIT_VOICES.items()}
  missing = [p for ps in files.values() for p in ps if not os.path.isfile(p)]
  if missing:
    raise errors.UserError(
        f'the Tux Paint stamps at {folder!r} lack {len(missing)} spoken '
        f'digits ({", ".join(os.path.basename(p) for p in missing)}); unpack '
        f'tuxpaint-stamps-default 2022.06.04 again (`make tuxpaint`).')
  return (list(files), [[speech.trim(read_ogg(p, rate)) for p in ps]
                        for ps in files.values()])


# ------------------------------------------------------------------ Stamps ---
@dataclasses.dataclass(frozen=True)
class Stamp:
  """One stamp: its id (path without extension, '/'-separated), its folder,
  the names of the files in that folder and its PNG's among them."""
  id: str
  folder: str
  files: frozenset
  image: str = ''

  @property
  def name(self) -> str:
    return self.id.rsplit('/', 1)[-1]

  def path(self, file: str) -> str:
    return os.path.join(self.folder, file)


def _by_stem(files, ext: str) -> dict[str, str]:
  """{stem: file} of the `files` ending in `ext`, in any case."""
  return {f[:-len(ext)]: f for f in sorted(files) if f.lower().endswith(ext)}


def find_stamps(root: str):
  """(stamps with a PNG, [(id, reason)] of those skipped), both sorted by id,
  of the stamps folder `root`. Hidden files and folders are ignored."""
  stamps, skipped = [], []
  for folder, dirs, files in os.walk(root):
    dirs[:] = sorted(d for d in dirs if not d.startswith('.'))
    rel = os.path.relpath(folder, root)
    if rel == '.':
      continue  # stamps sit in category folders, not at the top
    files = frozenset(f for f in files if not f.startswith('.'))
    pngs, svgs = _by_stem(files, '.png'), _by_stem(files, '.svg')
    for name in sorted(set(pngs) | set(svgs)):
      ident = '/'.join(rel.split(os.sep) + [name])
      if name in pngs:
        stamps.append(Stamp(ident, folder, files, pngs[name]))
      else:
        skipped.append((ident, 'SVG only (not rasterized)'))
  return sorted(stamps, key=lambda s: s.id), sorted(skipped)


def categories(root: str) -> list[str]:
  """The category folders of the stamps folder `root`, sorted."""
  return sorted(d for d in os.listdir(root) if not d.startswith('.') and
                os.path.isdir(os.path.join(root, d)))


def category_of(ident: str) -> str:
  return ident.split('/', 1)[0]


def subcategory_of(ident: str) -> str:
  """'category/sub' of a stamp in a subfolder, 'category' of one at the top."""
  return '/'.join(ident.split('/')[:-1][:2])


def _unit(ident: str, salt: str) -> float:
  """A number in [0, 1) fixed by `ident` (and `salt`)."""
  digest = hashlib.sha1(f'{salt}{ident}'.encode()).digest()
  return int.from_bytes(digest[:8], 'big') / 2**64


def split_of(ident: str, fractions=(0.7, 0.1, 0.2)) -> str:
  """train, validation or test, from a hash of the stamp's id."""
  u = _unit(ident, '')
  train, validation, _ = fractions
  return ('train' if u < train else 'validation'
          if u < train + validation else 'test')


# ---------------------------------------------------------------- Captions ---
def parse_captions(text: str) -> dict[str, str]:
  """{locale: caption} of a stamp's .txt: 'en' is line 1, every other is a
  `<locale>.utf8=<caption>` line; empty captions are left out."""
  lines = text.splitlines()
  out = {'en': lines[0].strip()} if lines else {}
  for line in lines[1:]:
    key, sep, value = line.partition('=')
    if sep and key.strip().endswith('.utf8'):
      out.setdefault(key.strip()[:-len('.utf8')], value.strip())
  return {k: v for k, v in out.items() if v}


def read_captions(stamp: Stamp) -> dict[str, str]:
  """{locale: caption} of a stamp ({} without a .txt); a UserError naming a
  file that is not UTF-8."""
  file = stamp.name + '.txt'
  if file not in stamp.files:
    return {}
  path = stamp.path(file)
  try:
    with open(path, encoding='utf-8-sig') as f:
      return parse_captions(f.read())
  except (OSError, UnicodeDecodeError) as e:
    raise errors.UserError(f'cannot read {path!r} ({e}); the file is '
                           f'damaged: unpack the package again.') from None


def pick_locale(captions: dict, locale: str, rng) -> str | None:
  """The locale whose caption an example gets (None: none there): `locale`
  itself, or for 'random' one of the stamp's, drawn with `rng`."""
  if locale != 'random':
    return locale if locale in captions else None
  if not captions:
    return None
  return sorted(captions)[rng.integers(len(captions))]


# -------------------------------------------------------------- Recordings ---
def recording(stamp: Stamp, audio: str, lang: str) -> str | None:
  """The file name of the stamp's recording of kind `audio` in `lang` (see
  the module docstring), or None when it has none."""
  name = stamp.name
  if audio == 'sound':
    return next((name + ext for ext in SOUND_EXTS
                 if name + ext in stamp.files), None)
  prefix = f'{name}_desc' if audio == 'desc' else name
  exact = [f'{prefix}_{lang}']
  if audio == 'desc' and lang == 'en':
    exact.insert(0, prefix)  # untagged descriptions are English
  for ext in SOUND_EXTS:
    for stem in exact:
      if stem + ext in stamp.files:
        return stem + ext
  variant = re.compile(re.escape(f'_{lang}') + r'_[A-Za-z]{2,4}',
                       re.IGNORECASE)
  for ext in SOUND_EXTS:
    for f in sorted(stamp.files):
      if (f.endswith(ext) and f.startswith(prefix) and
          variant.fullmatch(f[len(prefix):-len(ext)])):
        return f
  return None


# ------------------------------------------------------------------ Images ---
def square_rgb(im, size: int) -> np.ndarray:
  """uint8 [size, size, 3] of a PIL image: composited on white, padded to a
  square with white (centred, aspect kept), resized with LANCZOS."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  rgba = im.convert('RGBA')
  white = Image.new('RGBA', rgba.size, (255, 255, 255, 255))
  rgb = Image.alpha_composite(white, rgba).convert('RGB')
  w, h = rgb.size
  side = max(w, h)
  canvas = Image.new('RGB', (side, side), (255, 255, 255))
  canvas.paste(rgb, ((side - w) // 2, (side - h) // 2))
  return np.asarray(canvas.resize((size, size), Image.LANCZOS), np.uint8)


def read_png(path: str, size: int) -> np.ndarray:
  """uint8 [size, size, 3] of a stamp's PNG (`square_rgb`); a UserError
  naming a file that cannot be decoded."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  try:
    with Image.open(path) as im:
      im.load()
      return square_rgb(im, size)
  except (OSError, ValueError, SyntaxError, EOFError,
          Image.DecompressionBombError) as e:
    raise errors.UserError(f'cannot decode {path!r} ({e}); the file is '
                           f'damaged: unpack the package again.') from None


# ----------------------------------------------------------------- Builder ---
@dataclasses.dataclass(eq=False)
class TuxpaintConfig(tfds.core.BuilderConfig):
  """Where the stamps are, which caption and recording, and their sizes."""
  stamps_dir: str = DEFAULT_DIR  # see `stamps_dir`
  image_size: int = 64
  sample_rate: int = 16_000
  audio_samples: int = 48_000  # 3 s at 16 kHz; longer are cut
  text_length: int = 64  # tokens
  # 'bytes', or a BERT checkpoint whose WordPiece ids the text becomes.
  text_tokenizer: str = 'bytes'
  text_locale: str = 'en'  # 'en' (line 1), a locale (fr, pt_BR) or 'random'
  audio: str = 'desc'  # 'desc', 'name' or 'sound' (see the module docstring)
  audio_lang: str = 'en'  # language of the recording (not for 'sound')
  split_fractions: tuple[float, float, float] = (0.7, 0.1, 0.2)
  seed: int = 0  # draws the locale of text_locale='random'


BUILDER_CONFIGS = [TuxpaintConfig(
    name='default', description='Tux Paint stamps: picture, caption and '
    'spoken description, labelled by category.')]


def check(c: TuxpaintConfig):
  """Raises ValueError naming the first field that cannot work (and a
  UserError saying how to get the stamps when they are not there)."""
  for field in ('image_size', 'sample_rate', 'audio_samples', 'text_length'):
    if not isinstance(getattr(c, field), int) or getattr(c, field) < 1:
      raise ValueError(f'{field} must be a whole number >= 1, not '
                       f'{getattr(c, field)!r}')
  if c.text_locale != 'random' and not re.fullmatch(_TAG, c.text_locale):
    raise ValueError(f"text_locale {c.text_locale!r} is not 'random' or a "
                     f"locale such as 'en', 'fr' or 'pt_BR'")
  if c.audio not in AUDIO:
    raise ValueError(f'audio {c.audio!r} is not one of {", ".join(AUDIO)}')
  if not re.fullmatch(_TAG, c.audio_lang):
    raise ValueError(f"audio_lang {c.audio_lang!r} is not a language such "
                     f"as 'en', 'fr' or 'pt_BR'")
  fractions = tuple(c.split_fractions)
  if (len(fractions) != 3 or min(fractions) < 0 or
      abs(sum(fractions) - 1) > 1e-6):
    raise ValueError(f'split_fractions {list(fractions)} must be 3 '
                     f'non-negative numbers (train, validation, test) '
                     f'summing to 1')
  stamps_dir(c.stamps_dir)  # a UserError saying how to get them


def stamp_example(c: TuxpaintConfig, stamp: Stamp, names: dict, tok) -> dict:
  """The example of one stamp; `names` = {'label': [...], 'subcategory':
  [...]}, the class names; `tok` encodes the text."""
  captions = read_captions(stamp)
  rng = np.random.default_rng([c.seed, int(_unit(stamp.id, 'locale') * 2**32)])
  locale = pick_locale(captions, c.text_locale, rng)
  file = recording(stamp, c.audio, c.audio_lang)
  audio_A = np.zeros(c.audio_samples, np.float32)
  if file is not None:
    audio_A = manifest.fit_length(read_ogg(stamp.path(file), c.sample_rate),
                                  c.audio_samples)
  text_L = (tok.encode([captions[locale]], c.text_length)[0]
            if locale is not None else np.zeros(c.text_length, np.int32))
  return {
      'image': read_png(stamp.path(stamp.image), c.image_size),
      'text': text_L.astype(np.int32), 'audio': audio_A,
      'present': {'image': True, 'text': locale is not None,
                  'audio': file is not None},
      'label': names['label'].index(category_of(stamp.id)),
      'subcategory': names['subcategory'].index(subcategory_of(stamp.id)),
      'id': stamp.id, 'locale': locale or ''}


class Tuxpaint(tfds.core.GeneratorBasedBuilder):
  """Tux Paint's stamps: picture, caption and speech; label = category."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'First release.'}
  BUILDER_CONFIGS = BUILDER_CONFIGS

  @functools.cached_property
  def _scan(self):
    """(stamps folder, stamps, skipped, class names) of the config."""
    c = self.builder_config
    root = stamps_dir(c.stamps_dir)
    stamps, skipped = find_stamps(root)
    names = {'label': categories(root),
             'subcategory': sorted({subcategory_of(s.id) for s in stamps})}
    return root, stamps, skipped, names

  def _info(self):
    c = self.builder_config
    check(c)
    root, stamps, skipped, names = self._scan
    tensor = tfds.features.Tensor
    size = c.image_size
    features = {
        'image': tensor(shape=(size, size, 3), dtype=np.uint8),
        'text': tensor(shape=(c.text_length,), dtype=np.int32),
        'audio': tensor(shape=(c.audio_samples,), dtype=np.float32),
        'present': {m: tensor(shape=(), dtype=np.bool_) for m in MODALITIES},
        'label': tfds.features.ClassLabel(names=names['label']),
        'subcategory': tfds.features.ClassLabel(names=names['subcategory']),
        'id': tfds.features.Text(), 'locale': tfds.features.Text()}
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict(features), supervised_keys=None,
        description=f'{len(stamps)} Tux Paint stamps of {root}; '
        f'{len(skipped)} SVG-only stamps skipped (listed in {REPORT}).')

  def _split_generators(self, dl_manager):
    del dl_manager  # The files are local.
    _, stamps, skipped, _ = self._scan
    with open(os.path.join(self.data_dir, REPORT), 'w') as f:
      f.write('id\treason\n')
      f.writelines(f'{i}\t{why}\n' for i, why in skipped)
    fractions = tuple(self.builder_config.split_fractions)
    parts = {s: [t for t in stamps if split_of(t.id, fractions) == s]
             for s in SPLITS}
    tally = progress.Tally(len(stamps), 'stamps read')
    done = itertools.count(1)
    return {s: self._generate_examples(part, lambda: tally.update(next(done)))
            for s, part in parts.items() if part}

  def _generate_examples(self, stamps, count):
    c = self.builder_config
    tok = tokenizer.for_text(c.text_tokenizer)
    names = self._scan[3]
    for stamp in stamps:
      yield stamp.id, stamp_example(c, stamp, names, tok)
      count()

  def download_and_prepare(self, **kwargs):  # pylint: disable=arguments-differ
    """Builds once; then, every time, says how many stamps were skipped."""
    super().download_and_prepare(**kwargs)
    report = os.path.join(self.data_dir, REPORT)
    skipped = len(self._scan[2])  # the same whether or not built just now
    if skipped:
      print(f'{skipped} SVG-only Tux Paint stamps were skipped (not '
            f'rasterized); see {report}.', flush=True)
