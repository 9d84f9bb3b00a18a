"""A subword vocabulary learned from a dataset's training texts (SentencePiece).

SentencePiece (Kudo & Richardson 2018) learns a unigram language model
(Kudo 2018) or BPE merges (Sennrich et al. 2016) offline, at dataset build
time, from the training split's texts. The vocabulary is saved as a standard
`.model` file (`MODEL_FILE`) next to the dataset and loaded back from there.
Ids: 0 <pad> (what the text encoders mask out), 1 <s> and 2 </s> (BOS and
EOS, for a decoder), 3 <unk>, then any user symbols (e.g. prompt tokens such
as "<fr>"), then the learned pieces.

`encode` / `decode` have the interface of `tokenizer.ByteTokenizer`.
Training is byte-deterministic: the same strings and options give the same
model file. It runs on one thread because the thread count is stored in the
model and threads could change the learned scores.
Legend: N texts, L length.
"""

import io
import os
import re
from typing import Iterable, Sequence

import numpy as np
import sentencepiece as spm

from mmfusion.runtime import errors

MODEL_FILE = 'subword.model'
MODEL_TYPES = ('unigram', 'bpe')
PAD_ID, BOS_ID, EOS_ID, UNK_ID = 0, 1, 2, 3
RESERVED = {'<pad>': PAD_ID, '<s>': BOS_ID, '</s>': EOS_ID, '<unk>': UNK_ID}


def _as_list(texts) -> list[str]:
  return [texts] if isinstance(texts, str) else list(texts)


class SubwordTokenizer:
  """A trained SentencePiece model with mmfusion's reserved ids."""
  pad_id, bos_id, eos_id, unk_id = PAD_ID, BOS_ID, EOS_ID, UNK_ID

  def __init__(self, model: bytes, source: str = 'the model bytes'):
    """`model` is a `.model` file's bytes; `source` names them in errors."""
    try:
      self._sp = spm.SentencePieceProcessor(model_proto=bytes(model))
    except RuntimeError:
      raise errors.UserError(
          f'{source} is not a SentencePiece model; train one with '
          f'subword.train and save it.') from None
    ids = {p: self._sp.piece_to_id(p) for p in RESERVED}
    if ids != RESERVED:
      raise errors.UserError(
          f'{source} has the reserved ids {ids}, not {RESERVED}; train it '
          f'with subword.train so that 0 pads.')
    self.model = bytes(model)

  @property
  def vocab_size(self) -> int:
    return self._sp.get_piece_size()

  def piece_id(self, piece: str) -> int:
    """The id of one piece, such as a prompt symbol given to `train`."""
    i = self._sp.piece_to_id(piece)
    if i == UNK_ID and piece != '<unk>':
      raise errors.UserError(
          f'the subword vocabulary has no piece {piece!r}; list it in '
          f'symbols= when training the vocabulary.')
    return i

  def encode(self, texts: str | Iterable[str], max_len: int,
             bos: bool = False, eos: bool = False) -> np.ndarray:
    """[N, max_len] int32 ids, right-padded with 0.

    The pieces are cut to fit; a requested BOS / EOS is always kept (the
    last id of a cut row is EOS, so a decoder still learns to stop).
    """
    room = max_len - bos - eos
    if room < 1:
      raise errors.UserError(
          f'max_len must be at least {1 + bos + eos} (one piece plus the '
          f'requested BOS/EOS), got {max_len}.')
    rows = self._sp.encode(_as_list(texts), out_type=int)
    ids_NxL = np.full((len(rows), max_len), PAD_ID, np.int32)
    for i, row in enumerate(rows):
      row = [BOS_ID] * bos + row[:room] + [EOS_ID] * eos
      ids_NxL[i, :len(row)] = row
    return ids_NxL

  def decode(self, ids_NxL) -> list[str]:
    """Strings from ids: each row is read up to its first EOS, and padding
    and BOS are skipped."""
    ids_NxL = np.atleast_2d(np.asarray(ids_NxL))
    bad = ids_NxL[(ids_NxL < 0) | (ids_NxL >= self.vocab_size)]
    if bad.size:
      raise errors.UserError(
          f'id {int(bad[0])} is outside the subword vocabulary of '
          f'{self.vocab_size}; decode ids made with this tokenizer.')
    out = []
    for row in ids_NxL.tolist():
      row = row[:row.index(EOS_ID)] if EOS_ID in row else row
      out.append(self._sp.decode([i for i in row if i not in (PAD_ID, BOS_ID)]))
    return out

  def save(self, path: str):
    """Writes the `.model` file (any SentencePiece tool reads it)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, 'wb') as f:
      f.write(self.model)


def _check_options(texts, vocab_size, model_type, symbols,
                   character_coverage):
  if model_type not in MODEL_TYPES:
    raise errors.unknown_name('subword model type', model_type, MODEL_TYPES)
  if (not isinstance(vocab_size, int) or isinstance(vocab_size, bool) or
      vocab_size <= len(RESERVED) + len(symbols)):
    raise errors.UserError(
        f'vocab_size must be an integer above {len(RESERVED) + len(symbols)} '
        f'(the 4 reserved ids and {len(symbols)} symbols), got '
        f'{vocab_size!r}.')
  if not 0.98 <= character_coverage <= 1.0:
    raise errors.UserError(
        f'character_coverage must be in [0.98, 1] (SentencePiece\'s range), '
        f'got {character_coverage}.')
  if (any(not isinstance(s, str) or not s or s in RESERVED for s in symbols)
      or len(set(symbols)) != len(symbols)):
    raise errors.UserError(
        f'symbols must be distinct non-empty strings other than '
        f'{", ".join(RESERVED)}; got {list(symbols)}.')
  bad = next((i for i, t in enumerate(texts) if not isinstance(t, str)), None)
  if bad is not None:
    raise errors.UserError(
        f'training text {bad} is a {type(texts[bad]).__name__}, not a '
        f'string; pass the training split\'s strings.')
  if not any(t.strip() for t in texts):
    raise errors.UserError(
        'there are no training strings to learn a subword vocabulary from; '
        'pass the training split\'s texts.')


def _training_error(e: RuntimeError, vocab_size: int,
                    n: int) -> errors.UserError:
  """SentencePiece's terse message as one sentence with the fix."""
  msg = str(e)
  most = re.search(r'value <= (\d+)', msg)
  if most:
    return errors.UserError(
        f'vocab_size {vocab_size} is more pieces than {n} training strings '
        f'yield; set it to at most {most.group(1)}.')
  least = re.search(r'required_chars\. \d+ vs (\d+)', msg)
  if least:
    return errors.UserError(
        f'vocab_size {vocab_size} cannot hold every character of the '
        f'training strings plus the reserved ids; set it to at least '
        f'{least.group(1)} or lower character_coverage.')
  return errors.UserError(f'SentencePiece could not train on these strings '
                          f'({msg.strip()}); check the options.')


def train(texts: Sequence[str], vocab_size: int, model_type: str = 'unigram',
          symbols: Sequence[str] = (), character_coverage: float = 1.0,
          hard_limit: bool = True, normalization: str = 'nmt_nfkc'
          ) -> SubwordTokenizer:
  """A vocabulary of exactly `vocab_size` pieces learned from `texts`
  (at most that many with `hard_limit=False`).

  Args:
    texts: the training split's strings (never validation or test ones).
    vocab_size: pieces in all, the 4 reserved ids and `symbols` included.
    model_type: 'unigram' (SentencePiece's default) or 'bpe'.
    symbols: strings kept whole with ids from 4 on, e.g. prompt tokens.
    character_coverage: the share of characters covered; the rest are
      <unk>. 1.0 suits the small alphabets of captions; SentencePiece
      suggests 0.9995 for Chinese or Japanese.
    hard_limit: False lets the vocabulary stop short of `vocab_size` where
      the texts hold fewer pieces (small or repetitive corpora, such as a
      synthetic dataset's captions or a test's few strings).
    normalization: SentencePiece's rule: 'nmt_nfkc' (its default: NFKC
      and whitespace folding, a 240 KB table in the model) or 'identity'
      (the text as given, a model of a few KB, for generated texts).
  """
  texts, symbols = _as_list(texts), list(symbols)
  _check_options(texts, vocab_size, model_type, symbols, character_coverage)
  buf = io.BytesIO()
  try:
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts), model_writer=buf,
        model_type=model_type, vocab_size=vocab_size,
        character_coverage=character_coverage,
        user_defined_symbols=symbols, hard_vocab_limit=hard_limit,
        normalization_rule_name=normalization,
        pad_id=PAD_ID, bos_id=BOS_ID, eos_id=EOS_ID, unk_id=UNK_ID,
        num_threads=1, minloglevel=2)  # one thread: same bytes every time
  except RuntimeError as e:
    raise _training_error(e, vocab_size, len(texts)) from None
  return SubwordTokenizer(buf.getvalue())


def load(path: str) -> SubwordTokenizer:
  """The tokenizer saved at `path` (e.g. `os.path.join(data_dir,
  MODEL_FILE)`)."""
  try:
    with open(os.path.expanduser(path), 'rb') as f:
      model = f.read()
  except FileNotFoundError:
    raise errors.UserError(
        f'no subword model at {path!r}; build the dataset (which trains it) '
        f'or call subword.train(...).save first.') from None
  return SubwordTokenizer(model, source=repr(path))
