"""Text tokenizers that need no download: bytes, or words seen in training.

Both map a list of strings to right-padded int32 ids [N, max_len] with 0 as
padding (what the text encoders mask out) and back, and save to / load from a
small JSON file so a run and its evaluation share one vocabulary.
Pure numpy; no JAX.
"""

import base64
import collections
import functools
import json
import os
import re
from typing import Iterable, Sequence

import numpy as np

from mmfusion.runtime import errors

PAD_ID = 0
# Words are runs of letters/digits/underscore; every other non-space character
# is a word of its own.
_WORD_RE = re.compile(r'\w+|[^\w\s]')


def _as_list(texts) -> list[str]:
  return [texts] if isinstance(texts, str) else list(texts)


def _pad(rows: Sequence[Sequence[int]], max_len: int) -> np.ndarray:
  """Right-pad with PAD_ID and truncate to [N, max_len] int32."""
  if max_len < 1:
    raise errors.UserError(f'max_len must be at least 1, got {max_len}.')
  ids_NxL = np.full((len(rows), max_len), PAD_ID, np.int32)
  for i, row in enumerate(rows):
    row = list(row)[:max_len]
    ids_NxL[i, :len(row)] = row
  return ids_NxL


class ByteTokenizer:
  """UTF-8 bytes as ids (ByT5, Xue et al. 2022): id = byte value 1..255.

  NUL bytes are dropped so that 0 is free for padding; `vocab_size` is 256,
  the text encoders' default.
  """
  vocab_size = 256

  def encode(self, texts: str | Iterable[str], max_len: int) -> np.ndarray:
    """[N, max_len] int32 ids, truncated (possibly mid-character) and padded."""
    return _pad([[b for b in t.encode('utf-8') if b != PAD_ID]
                 for t in _as_list(texts)], max_len)

  def decode(self, ids_NxL) -> list[str]:
    """Strings from ids; padding is skipped and broken characters replaced."""
    return [bytes(int(i) for i in row if i != PAD_ID).decode('utf-8', 'replace')
            for row in np.atleast_2d(ids_NxL)]

  def to_json(self) -> dict:
    return {'type': 'byte'}

  def save(self, path: str):
    _write_json(path, self.to_json())


class WordTokenizer:
  """A word vocabulary counted from training strings: <pad>=0, <unk>=1, then
  words by descending count (ties alphabetical)."""
  PAD, UNK = '<pad>', '<unk>'

  def __init__(self, words: Sequence[str], lowercase: bool = True):
    if list(words[:2]) != [self.PAD, self.UNK]:
      raise errors.UserError(
          f'a word vocabulary must start with {self.PAD!r}, {self.UNK!r}; '
          f'got {list(words[:2])}.')
    self.words = list(words)
    self.lowercase = lowercase
    self._ids = {w: i for i, w in enumerate(self.words)}

  @classmethod
  def fit(cls, texts: Iterable[str], max_vocab: int | None = None,
          min_count: int = 1, lowercase: bool = True) -> 'WordTokenizer':
    """The vocabulary of `texts`: words seen `min_count`+ times, at most
    `max_vocab` entries including <pad> and <unk>."""
    counts = collections.Counter(
        w for t in _as_list(texts) for w in cls._split(t, lowercase))
    ranked = sorted((w for w, c in counts.items() if c >= min_count),
                    key=lambda w: (-counts[w], w))
    if max_vocab is not None:
      ranked = ranked[:max(max_vocab - 2, 0)]
    return cls([cls.PAD, cls.UNK, *ranked], lowercase)

  @staticmethod
  def _split(text: str, lowercase: bool) -> list[str]:
    return _WORD_RE.findall(text.lower() if lowercase else text)

  @property
  def vocab_size(self) -> int:
    return len(self.words)

  @property
  def unk_id(self) -> int:
    return 1

  def encode(self, texts: str | Iterable[str], max_len: int) -> np.ndarray:
    """[N, max_len] int32 ids; unseen words become <unk>."""
    return _pad([[self._ids.get(w, self.unk_id)
                  for w in self._split(t, self.lowercase)]
                 for t in _as_list(texts)], max_len)

  def decode(self, ids_NxL) -> list[str]:
    """Space-joined words; padding is skipped."""
    return [' '.join(self.words[int(i)] for i in row if i != PAD_ID)
            for row in np.atleast_2d(ids_NxL)]

  def to_json(self) -> dict:
    return {'type': 'word', 'lowercase': self.lowercase, 'words': self.words}

  def save(self, path: str):
    _write_json(path, self.to_json())


def _write_json(path: str, obj: dict):
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, 'w', encoding='utf-8') as f:
    json.dump(obj, f, ensure_ascii=False)


def load_tokenizer(path: str) -> ByteTokenizer | WordTokenizer:
  """The tokenizer saved at `path` by `save`."""
  try:
    with open(path, encoding='utf-8') as f:
      obj = json.load(f)
  except FileNotFoundError:
    raise errors.UserError(
        f'no tokenizer file at {path!r}; build one and call save() first.'
    ) from None
  except json.JSONDecodeError as e:
    raise errors.UserError(f'{path!r} is not a tokenizer JSON file ({e}).') from None
  kind = obj.get('type') if isinstance(obj, dict) else None
  if kind == 'byte':
    return ByteTokenizer()
  if kind == 'word':
    return WordTokenizer(obj['words'], obj.get('lowercase', True))
  raise errors.UserError(
      f'{path!r} holds no known tokenizer type ({kind!r}); '
      f"expected 'byte' or 'word'.")


@functools.lru_cache(maxsize=8)  # one read of a tokenizer file per process
def for_text(name: str):
  """What a builder encodes text with: 'bytes' (`ByteTokenizer`), or a BERT
  checkpoint (a `pretrained.bert` name or folder) whose WordPiece ids a
  pretrained text encoder reads. Both have `encode(texts, length)`. A
  'subword' vocabulary is trained by the builder that uses it
  (`mmfusion.data.subword`), so it has no name here."""
  if name == 'bytes':
    return ByteTokenizer()
  if name == 'subword':
    raise errors.UserError(
        "text_tokenizer='subword' is trained on a dataset's training split "
        "when it is built; only builders with caption or question text "
        "(av_digits/captions, av_digits/qa) offer it.")
  from mmfusion.data import wordpiece  # pylint: disable=g-import-not-at-top
  return wordpiece.from_checkpoint(name)


def preprocessing(name: str, data_dir: str | None = None) -> dict:
  """How DataInfo records the tokenizer a builder encoded text with:
  `for_text(name)`, or for 'subword' the SentencePiece model the builder
  trained into `data_dir` (its bytes, base64, so a workdir needs no data)."""
  if name == 'bytes':
    return {'tokenizer': 'bytes'}
  if name == 'subword':
    from mmfusion.data import subword  # pylint: disable=g-import-not-at-top
    model = subword.load(os.path.join(data_dir or '', subword.MODEL_FILE)).model
    return {'tokenizer': 'subword',
            'model': base64.b64encode(model).decode('ascii')}
  return {'tokenizer': 'wordpiece', 'checkpoint': name}


def of_preprocessing(how: dict):
  """The tokenizer DataInfo's `preprocessing` entry names."""
  if how.get('tokenizer') == 'subword':
    from mmfusion.data import subword  # pylint: disable=g-import-not-at-top
    return subword.SubwordTokenizer(base64.b64decode(how['model']),
                                    source="the workdir's subword model")
  return for_text(how.get('checkpoint', 'bytes'))
