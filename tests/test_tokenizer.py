"""Byte and word tokenizers: ids, padding, round trips and saved vocabularies."""

import numpy as np
import pytest

from mmfusion.runtime import errors
from mmfusion.data import tokenizer as tok


def test_byte_ids_are_utf8_bytes_padded_with_zero():
  ids = tok.ByteTokenizer().encode(['hi', 'é!'], max_len=4)
  assert ids.dtype == np.int32 and ids.shape == (2, 4)
  np.testing.assert_array_equal(ids, [[104, 105, 0, 0], [0xC3, 0xA9, 33, 0]])
  assert ids.max() < tok.ByteTokenizer.vocab_size


def test_byte_round_trip_truncation_and_nul():
  t = tok.ByteTokenizer()
  assert t.decode(t.encode(['héllo wörld', 'a\x00b'], 32)) == ['héllo wörld', 'ab']
  assert t.decode(t.encode('abcdef', 3)) == ['abc']


def test_word_vocabulary_is_ranked_by_count():
  t = tok.WordTokenizer.fit(['the cat sat', 'The dog, the end.'])
  assert t.words[:3] == ['<pad>', '<unk>', 'the']
  assert t.vocab_size == len(t.words) == 2 + 7  # the cat sat dog , end .
  ids = t.encode(['the zebra sat', ''], max_len=5)
  assert ids.dtype == np.int32 and ids.shape == (2, 5)
  assert ids[0, 1] == t.unk_id and list(ids[0, 3:]) == [0, 0]
  assert not ids[1].any()
  assert t.decode(ids) == ['the <unk> sat', '']


def test_word_vocabulary_limits():
  texts = ['a a a b b c']
  assert tok.WordTokenizer.fit(texts, max_vocab=3).words == ['<pad>', '<unk>', 'a']
  assert tok.WordTokenizer.fit(texts, min_count=2).words[2:] == ['a', 'b']


@pytest.mark.parametrize('make', [
    tok.ByteTokenizer, lambda: tok.WordTokenizer.fit(['Hello there, world'])])
def test_save_and_load_give_the_same_ids(tmp_path, make):
  t = make()
  path = str(tmp_path / 'vocab' / 'tokenizer.json')
  t.save(path)
  loaded = tok.load_tokenizer(path)
  assert type(loaded) is type(t)
  texts = ['hello world', 'new words here!']
  np.testing.assert_array_equal(loaded.encode(texts, 8), t.encode(texts, 8))


def test_load_errors_speak_to_the_user(tmp_path):
  with pytest.raises(errors.UserError, match='no tokenizer file'):
    tok.load_tokenizer(str(tmp_path / 'missing.json'))
  bad = tmp_path / 'bad.json'
  bad.write_text('{"type": "sentencepiece"}')
  with pytest.raises(errors.UserError, match="expected 'byte' or 'word'"):
    tok.load_tokenizer(str(bad))
  with pytest.raises(errors.UserError, match='max_len'):
    tok.ByteTokenizer().encode(['x'], 0)
