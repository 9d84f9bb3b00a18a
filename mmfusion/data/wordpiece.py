"""The WordPiece (or BPE) tokenizer a pretrained text checkpoint came with.

`from_checkpoint` reads it, offline, from the same names and folders as
`mmfusion.pretrained.bert`: the folder's `tokenizer.json`, or its `vocab.txt`
when there is none (Wu et al. 2016's WordPiece, as BERT uses it). `encode`
gives [CLS] ... [SEP] (RoBERTa: <s> ... </s>) truncated and right-padded with
the checkpoint's pad id, the id the encoder masks out. Legend: N texts, L
length.
"""

import json
import pathlib

import numpy as np
import tokenizers

from mmfusion.pretrained import bert
from mmfusion.runtime import errors

_PAD_TOKENS = ('[PAD]', '<pad>')  # BERT's, RoBERTa's


class WordPiece:
  """A `tokenizers.Tokenizer` with its special tokens, padding with `pad_id`."""

  def __init__(self, tokenizer: tokenizers.Tokenizer, pad_id: int):
    self._tokenizer = tokenizer
    self._tokenizer.no_padding()  # padding is ours, to any length
    self._pad_id = pad_id

  @property
  def pad_id(self) -> int:
    return self._pad_id

  @property
  def vocab_size(self) -> int:
    return self._tokenizer.get_vocab_size()

  def encode(self, texts: list[str], length: int) -> np.ndarray:
    """[N, length] int32 ids: special tokens kept, text truncated to fit."""
    if length < 2:
      raise errors.UserError(
          f'length must be at least 2 (room for the start and end tokens), '
          f'got {length}.')
    self._tokenizer.enable_truncation(length)
    rows = self._tokenizer.encode_batch(list(texts))
    ids_NxL = np.full((len(rows), length), self._pad_id, np.int32)
    for i, row in enumerate(rows):
      ids_NxL[i, :len(row.ids)] = row.ids
    return ids_NxL


def from_checkpoint(checkpoint: str) -> WordPiece:
  """The tokenizer of a `pretrained.bert` checkpoint (name or folder)."""
  path = bert.folder(checkpoint, files=())
  if (path / 'tokenizer.json').is_file():
    tokenizer = tokenizers.Tokenizer.from_file(str(path / 'tokenizer.json'))
  elif (path / 'vocab.txt').is_file():
    tokenizer = tokenizers.BertWordPieceTokenizer(
        str(path / 'vocab.txt'), lowercase=_settings(path).get(
            'do_lower_case', True))  # BertTokenizer's default
  else:
    raise errors.UserError(
        f'the checkpoint folder {path} has neither tokenizer.json nor '
        f'vocab.txt; save the tokenizer there with save_pretrained.')
  return WordPiece(tokenizer, _pad_id(path, tokenizer))


def _settings(path: pathlib.Path) -> dict:
  file = path / 'tokenizer_config.json'
  return json.loads(file.read_text()) if file.is_file() else {}


def _pad_id(path: pathlib.Path, tokenizer) -> int:
  """The model's pad id (config.json), else the tokenizer's pad token."""
  if (path / 'config.json').is_file():
    pad_id = json.loads((path / 'config.json').read_text()).get('pad_token_id')
    if pad_id is not None:
      return pad_id
  for token in _PAD_TOKENS:
    if tokenizer.token_to_id(token) is not None:
      return tokenizer.token_to_id(token)
  raise errors.UserError(
      f'the tokenizer in {path} has no pad token ({" or ".join(_PAD_TOKENS)}) '
      f'and no config.json names pad_token_id; add one of them.')
