"""Text to generate about av_digits clips: the `captions` and `qa` configs.

A clip shows K digits (`digit_counts`) one after another, as the `video`
config does, and the same speaker says digits in its audio track. `captions`
pairs it with a language tag (the prompt) and the shown digits in words of
that language; `qa` with a question about the clip and its one-word answer
(`QUESTION_TYPES`). Both texts are tokenized with a SentencePiece vocabulary
learned from the train split's texts (`subword`), or as UTF-8 bytes.

Every example is first planned (digits, layouts, language or question) from
a cheap random stream of its own, so the vocabulary can be trained on the
train split's texts before any clip is rendered; the same plans then render
the clips. See the av_digits module docstring for the features.
Legend: K digits (the most a clip shows or says), L text length.
"""

import dataclasses
import functools
import os

import numpy as np
import tensorflow_datasets as tfds

from mmfusion.runtime import errors
from mmfusion.data import av_digits
from mmfusion.data import subword
from mmfusion.data import tokenizer

KINDS = ('captions', 'qa')
TAGS = tuple(f'<{lang}>' for lang in av_digits.WORDS)  # captions' prompts
ORDINALS = ('first', 'second', 'third', 'fourth', 'fifth', 'sixth', 'seventh',
            'eighth', 'ninth')
# Question type -> its templates. Template HELD_OUT of each type is asked only
# in split `test` (train, validation and test_seen ask the others), and uses
# only characters of the other templates, which the vocabulary has seen.
QUESTION_TYPES = {
    'ordinal_shown': ('what is the {ordinal} digit shown?',
                      'which digit is shown {ordinal}?',
                      'what is the {ordinal} digit in the video?'),
    'ordinal_spoken': ('what is the {ordinal} digit spoken?',
                       'which digit is spoken {ordinal}?',
                       'what is the {ordinal} digit in the audio?'),
    'count': ('how many digits are shown?',
              'how many digits does the video show?',
              'how many digits are in the video?'),
    'sync': ('is the sound in sync with the picture?',
             'is the audio in sync with the video?',
             'are the sound and the picture in sync?'),
    'extra': ('which digit is spoken but not shown?',
              'which digit is in the audio but not in the video?',
              'which digit is heard but not seen?'),
}
HELD_OUT = 2
# Text feature -> the config field of its length in tokens.
LENGTH_FIELDS = {'prompt': 'prompt_length', 'text': 'question_length',
                 'caption': 'caption_length'}
SALTS = ('train', 'validation', 'test', 'test_seen')


@dataclasses.dataclass(frozen=True)
class Plan:
  """What one example shows, says and asks, before it is rendered."""
  images: tuple[int, ...]  # indices into the split's image pool, shown order
  shown_at: tuple[int, ...]  # first frame of each shown digit
  spoken: tuple[int, ...]  # digits said, in order
  heard_at: tuple[int, ...]  # first frame of each spoken word's window
  digits: tuple[int, ...]  # digits shown, in order
  sync: int = 1
  language: int = 0  # captions: index into list(WORDS)
  question_type: int = 0  # qa: index into list(QUESTION_TYPES)
  template: int = 0
  texts: tuple[tuple[str, str], ...] = ()  # (feature, string) to tokenize


def lengths(c) -> dict[str, int]:
  """{text feature: its length in tokens} of a captions or qa config."""
  if c.kind == 'captions':
    return {'prompt': c.prompt_length, 'caption': c.caption_length}
  return {'text': c.question_length, 'caption': c.caption_length}


def splits(c) -> dict[str, int]:
  """{split: number of examples}; qa adds test_seen (the train templates on
  test clips) next to test (the held-out templates)."""
  sizes = {'train': c.num_train, 'validation': c.num_validation,
           'test': c.num_test}
  if c.kind == 'qa':
    sizes['test_seen'] = c.num_test
  return {s: n for s, n in sizes.items() if n > 0}


def sync_counts(c) -> list[int]:
  """The digit counts whose layouts have a pair shifted by min_shift."""
  out = []
  for k in range(c.digit_counts[0], c.digit_counts[1] + 1):
    options = av_digits.layouts(c, k)
    if len(options) and np.abs(options[:, None] - options[None]).max(
        -1).max() >= c.min_shift:
      out.append(k)
  return out


def check(c):
  """Raises ValueError naming the first field of a captions or qa config
  that cannot work."""
  low, high = c.digit_counts
  if not 1 <= low <= high <= len(ORDINALS):
    raise ValueError(f'digit_counts {tuple(c.digit_counts)} must satisfy '
                     f'1 <= low <= high <= {len(ORDINALS)}')
  if not len(av_digits.layouts(c, high)):
    raise ValueError(f'digit_counts asks for up to {high} digits of '
                     f'{c.visible_frames} frames each, which do not fit in '
                     f'num_frames={c.num_frames}')
  if c.kind == 'qa' and low == high:
    raise ValueError(f'digit_counts {tuple(c.digit_counts)} leaves no room '
                     f"for the extra spoken digit of 'extra' questions; make "
                     f'its high above its low')
  if c.kind == 'qa' and not sync_counts(c):
    raise ValueError(f'no count of {low}-{high} digits has two layouts '
                     f'min_shift={c.min_shift} frames apart, so sync '
                     f'questions would have no shifted clips; add num_frames')
  if c.text_tokenizer not in ('subword', 'bytes'):
    raise ValueError(f"text_tokenizer {c.text_tokenizer!r} is not 'subword' "
                     f"or 'bytes'")
  short = [LENGTH_FIELDS[f] for f, n in lengths(c).items() if n < 1]
  if short:
    raise ValueError(f'{short[0]} must be at least 1')
  if c.text_tokenizer == 'subword':
    if c.subword_model not in subword.MODEL_TYPES:
      raise ValueError(f"subword_model {c.subword_model!r} is not 'unigram' "
                       f"or 'bpe'")
    if c.vocab_size <= len(subword.RESERVED) + len(TAGS):
      raise ValueError(f'vocab_size must be above '
                       f'{len(subword.RESERVED) + len(TAGS)} (the reserved ids '
                       f'and the language tags), got {c.vocab_size}')
    if c.num_train < 1:
      raise ValueError('num_train must be at least 1: the subword vocabulary '
                       'is learned from the train split')


def features(c) -> dict:
  """The TFDS features of a captions or qa example (besides audio, voice)."""
  tensor = lambda shape: tfds.features.Tensor(shape=shape, dtype=np.int32)
  high = c.digit_counts[1]
  out = {'video': tfds.features.Tensor(
             shape=(c.num_frames, c.frame_size, c.frame_size, 1),
             dtype=np.uint8),
         'digits': tensor((high,)), 'num_digits': tensor(())}
  out.update({f: tensor((n,)) for f, n in lengths(c).items()})
  if c.kind == 'captions':
    out['language'] = tensor(())
  else:
    out.update(spoken=tensor((high,)), question_type=tensor(()),
               template=tensor(()), sync=tensor(()))
  return out


# -------------------------------------------------------------------- Plans ---
def pool_split(split: str) -> str:
  """The split whose images and speakers `split` draws from."""
  return 'test' if split == 'test_seen' else split


def plans(c, split: str, n: int) -> list[Plan]:
  """The `n` examples of `split`, planned; the same for the same config."""
  labels = av_digits.image_pool(pool_split(split))[1]
  rng = np.random.default_rng([c.seed, SALTS.index(split), 1 +
                               KINDS.index(c.kind), 0])
  if c.kind == 'captions':
    return [caption_plan(c, labels, rng) for _ in range(n)]
  return [question_plan(c, labels, split == 'test', rng) for _ in range(n)]


def _pick(rng, options):
  return options[rng.integers(len(options))]


def caption_plan(c, labels, rng) -> Plan:
  """K digits in sync, and their words in a random language."""
  k = int(rng.integers(c.digit_counts[0], c.digit_counts[1] + 1))
  starts = tuple(int(s) for s in _pick(rng, av_digits.layouts(c, k)))
  images = rng.integers(0, len(labels), k)
  digits = tuple(int(d) for d in labels[images])
  lang = int(rng.integers(len(av_digits.WORDS)))
  words = av_digits.WORDS[list(av_digits.WORDS)[lang]]
  return Plan(images=tuple(int(i) for i in images), shown_at=starts,
              spoken=digits, heard_at=starts, digits=digits, language=lang,
              texts=(('prompt', TAGS[lang]),
                     ('caption', ' '.join(words[d] for d in digits))))


def question_plan(c, labels, held_out: bool, rng) -> Plan:
  """A clip, a question of a random type about it, and the answer."""
  qtype = int(rng.integers(len(QUESTION_TYPES)))
  name = list(QUESTION_TYPES)[qtype]
  template = HELD_OUT if held_out else int(rng.integers(HELD_OUT))
  low, high = c.digit_counts
  extra = name == 'extra' or (name != 'sync' and rng.random() < 0.5)
  counts = (sync_counts(c) if name == 'sync' else
            list(range(low, high + 1 - extra)))
  k = int(_pick(rng, counts))
  images = rng.integers(0, len(labels), k)
  shown = [int(d) for d in labels[images]]
  sync = 1
  if name == 'sync':
    options = av_digits.layouts(c, k)
    far = np.abs(options[:, None] - options[None]).max(-1) >= c.min_shift
    sync = int(rng.random() < 0.5)  # as video_examples draws its layouts
    if sync:
      at = heard = rng.choice(len(options), p=far.sum(0) / far.sum())
    else:
      at, heard = _pick(rng, np.argwhere(far))
    shown_at, heard_at, spoken = options[at], options[heard], list(shown)
  else:
    heard_at = _pick(rng, av_digits.layouts(c, k + extra))
    shown_at, spoken = heard_at, list(shown)
    if extra:  # one more word, said where no digit is on screen
      gap = int(rng.integers(k + 1))
      word = int(_pick(rng, np.setdiff1d(np.arange(10), shown)))
      spoken.insert(gap, word)
      shown_at = np.delete(heard_at, gap)
  en = av_digits.WORDS['en']
  ordinal = None
  if name == 'ordinal_shown':
    ordinal = int(rng.integers(k))
    answer = en[shown[ordinal]]
  elif name == 'ordinal_spoken':
    ordinal = int(rng.integers(len(spoken)))
    answer = en[spoken[ordinal]]
  elif name == 'count':
    answer = en[k]
  elif name == 'sync':
    answer = 'yes' if sync else 'no'
  else:
    answer = en[spoken[gap]]
  question = QUESTION_TYPES[name][template].format(
      ordinal=ORDINALS[ordinal] if ordinal is not None else '')
  return Plan(images=tuple(int(i) for i in images),
              shown_at=tuple(int(s) for s in shown_at), spoken=tuple(spoken),
              heard_at=tuple(int(s) for s in heard_at), digits=tuple(shown),
              sync=sync, question_type=qtype, template=template,
              texts=(('text', question), ('caption', answer)))


# --------------------------------------------------------------- Vocabulary ---
def vocabulary(c, data_dir: str):
  """Trains the subword vocabulary on the train split's texts and saves it as
  `data_dir`/subword.MODEL_FILE (nothing for bytes); then fails with one
  sentence if any text of any split is longer than its feature."""
  every = {split: plans(c, split, n) for split, n in splits(c).items()}
  if c.text_tokenizer == 'subword':
    texts = [t for p in every['train'] for _, t in p.texts]
    tok = subword.train(texts, c.vocab_size, c.subword_model, symbols=TAGS,
                        hard_limit=False, normalization='identity')
    tok.save(os.path.join(data_dir, subword.MODEL_FILE))
  else:
    tok = tokenizer.ByteTokenizer()
  for split_plans in every.values():
    encoded(c, split_plans, tok)
  return tok


def encode(tok, texts: list[str], length: int, field: str) -> np.ndarray:
  """int32 [N, length] ids of `texts`, right-padded with 0; a UserError names
  `field` when one of them is longer (nothing is cut)."""
  room = max(len(t.encode('utf-8')) for t in texts) + 2  # >= any tokenization
  ids_NxL = tok.encode(texts, max(room, length))
  sizes = (ids_NxL != 0).sum(1)
  worst = int(sizes.argmax())
  if sizes[worst] > length:
    name = LENGTH_FIELDS[field]
    raise errors.UserError(
        f'{name}={length} is too short for {texts[worst]!r} '
        f'({sizes[worst]} tokens); set data.overrides.{name} to at least '
        f'{sizes[worst]}.')
  return ids_NxL[:, :length]


def encoded(c, split_plans: list[Plan], tok) -> dict[str, np.ndarray]:
  """{text feature: int32 [N, L]} of the plans' texts."""
  if not split_plans:
    return {}
  return {f: encode(tok, [dict(p.texts)[f] for p in split_plans], n, f)
          for f, n in lengths(c).items()}


# ----------------------------------------------------------------- Examples ---
@functools.lru_cache(maxsize=1)  # test and test_seen share the test speakers
def _eval_bank(split: str, num_speakers: int, seed: int):
  return av_digits.speech_bank(split, num_speakers, seed)


def speakers(c, split: str):
  """Voice ids [P] and waves [P][10] of the speakers `split` draws from."""
  split = pool_split(split)
  if split == 'train':
    return av_digits.speech_bank(split, c.train_speakers, c.seed)
  return _eval_bank(split, c.eval_speakers, c.seed)


def padded(digits, size: int) -> np.ndarray:
  """int32 [size]: `digits`, then -1."""
  out = np.full(size, -1, np.int32)
  out[:len(digits)] = digits
  return out


def render(c, plan: Plan, images, bank, rng):
  """(video uint8 [T, F, F, 1], audio float32 [S], speaker) of a plan: the
  shown digits cross the frame from their first frames, and the spoken
  words start at random within the windows of theirs."""
  video = av_digits.draw_clip(c, images[list(plan.images)], plan.shown_at, rng)
  speaker = int(rng.integers(len(bank)))
  frame_len = c.audio_samples // c.num_frames
  window = c.visible_frames * frame_len
  words = [bank[speaker][d][:window] for d in plan.spoken]
  onsets = [int(s * frame_len + rng.integers(0, window - len(w) + 1))
            for s, w in zip(plan.heard_at, words)]
  return video, av_digits.place(words, onsets, c.audio_samples, rng), speaker


def examples(c, split: str, n: int, tok):
  """Yields (key, example) of a captions or qa split."""
  split_plans = plans(c, split, n)
  ids = encoded(c, split_plans, tok)
  images = av_digits.image_pool(pool_split(split))[0]
  voice_ids, bank = speakers(c, split)
  rng = np.random.default_rng([c.seed, SALTS.index(split), 1 +
                               KINDS.index(c.kind), 1])
  high = c.digit_counts[1]
  for key, plan in enumerate(split_plans):
    video, audio, speaker = render(c, plan, images, bank, rng)
    example = {'video': video, 'audio': audio, 'voice': voice_ids[speaker],
               'digits': padded(plan.digits, high),
               'num_digits': np.int32(len(plan.digits)),
               **{f: v[key] for f, v in ids.items()}}
    if c.kind == 'captions':
      example['language'] = np.int32(plan.language)
    else:
      example.update(spoken=padded(plan.spoken, high),
                     question_type=np.int32(plan.question_type),
                     template=np.int32(plan.template),
                     sync=np.int32(plan.sync))
    yield key, example
