"""SentencePiece subword vocabulary: ids, padding, round trips, saved models."""

import io

import numpy as np
import pytest
import sentencepiece as spm

from mmfusion.data import subword
from mmfusion.runtime import errors

_EN = 'zero one two three four five six seven eight nine'.split()
_FR = 'zéro un deux trois quatre cinq six sept huit neuf'.split()
# av_digits-like targets: three digits as words, in English and in French.
TEXTS = [' '.join(words[int(d)] for d in f'{i * 7919 % 1000:03d}')
         for i in range(150) for words in (_EN, _FR)]
UNSEEN = ['one two three', 'neuf huit sept', 'seven']


@pytest.fixture(scope='module', params=subword.MODEL_TYPES)
def tok(request):
  return subword.train(TEXTS, 40, request.param)


def test_round_trip_and_vocab_size(tok):
  ids = tok.encode(TEXTS[:4] + UNSEEN, 24)
  assert ids.dtype == np.int32 and ids.shape == (7, 24)
  assert tok.vocab_size == 40 and ids.max() < 40
  assert tok.decode(ids) == TEXTS[:4] + UNSEEN
  assert tok.decode(ids[0]) == [TEXTS[0]]


def test_reserved_ids(tok):
  assert [tok.piece_id(p) for p in ('<pad>', '<s>', '</s>', '<unk>')] == [
      0, 1, 2, 3]
  ids = tok.encode(TEXTS, 24)
  text = ids[ids != 0]
  assert text.size and text.min() > subword.EOS_ID  # no pad/BOS/EOS in text
  assert (ids[:, -1] == 0).all()  # 24 was room enough: padded, not cut
  assert subword.UNK_ID in tok.encode('one ✓', 8)[0]  # an unseen character


def test_padding_and_cut(tok):
  full = tok.encode('three seven one nine five', 24)[0]
  n = int((full != 0).sum())
  assert n > 4 and not full[n:].any()
  np.testing.assert_array_equal(tok.encode(['three seven one nine five'], 3)[0],
                                full[:3])
  both = tok.encode(['three seven one nine five'], 24, bos=True, eos=True)[0]
  np.testing.assert_array_equal(both[:n + 2], [1, *full[:n], 2])
  assert not both[n + 2:].any()
  cut = tok.encode(['three seven one nine five'], 4, bos=True, eos=True)[0]
  np.testing.assert_array_equal(cut, [1, full[0], full[1], 2])  # EOS kept


def test_decode_stops_at_eos_and_skips_bos(tok):
  ids = tok.encode(['two four', 'six'], 12, bos=True, eos=True)
  ids[:, -1] = tok.encode('nine', 1)[0, 0]  # junk after EOS
  assert tok.decode(ids) == ['two four', 'six']


def test_save_and_load(tmp_path, tok):
  path = tmp_path / 'av_digits' / subword.MODEL_FILE
  tok.save(str(path))
  assert path.read_bytes() == tok.model
  loaded = subword.load(str(path))
  np.testing.assert_array_equal(loaded.encode(UNSEEN, 16),
                                tok.encode(UNSEEN, 16))
  assert loaded.vocab_size == tok.vocab_size


@pytest.mark.parametrize('model_type', subword.MODEL_TYPES)
def test_training_is_byte_deterministic(model_type):
  a = subword.train(TEXTS, 40, model_type).model
  b = subword.train(list(TEXTS), 40, model_type).model
  assert a == b
  assert a != subword.train(TEXTS[1:], 40, model_type).model


def test_unigram_and_bpe_differ():
  uni, bpe = (subword.train(TEXTS, 40, m) for m in subword.MODEL_TYPES)
  assert uni.model != bpe.model
  assert not np.array_equal(uni.encode(TEXTS, 24), bpe.encode(TEXTS, 24))


def test_symbols_get_the_first_ids_after_the_reserved_ones():
  tok = subword.train(TEXTS, 40, symbols=['<en>', '<fr>'])
  assert tok.piece_id('<en>') == 4 and tok.piece_id('<fr>') == 5
  assert 5 in tok.encode('<fr> trois sept un', 16)[0]
  with pytest.raises(errors.UserError, match="no piece '<de>'"):
    tok.piece_id('<de>')


@pytest.mark.parametrize('kwargs, match', [
    ({'model_type': 'word'}, "unknown subword model type 'word'"),
    ({'vocab_size': 4}, 'vocab_size must be an integer above 4'),
    ({'vocab_size': 40.0}, 'vocab_size must be an integer'),
    ({'vocab_size': 10_000}, 'set it to at most 45'),
    ({'vocab_size': 12}, 'set it to at least 26'),
    ({'texts': []}, 'no training strings'),
    ({'texts': ['  ', '']}, 'no training strings'),
    ({'texts': ['one', 2]}, 'training text 1 is a int'),
    ({'symbols': ['<s>']}, 'symbols must be distinct'),
    ({'symbols': ['<x>', '<x>']}, 'symbols must be distinct'),
    ({'character_coverage': 0.5}, 'character_coverage must be in'),
])
def test_bad_training_options_are_one_sentence(kwargs, match):
  args = {'texts': TEXTS, 'vocab_size': 40, **kwargs}
  with pytest.raises(errors.UserError, match=match):
    subword.train(**args)


def test_bad_use_is_one_sentence(tmp_path, tok):
  with pytest.raises(errors.UserError, match='max_len must be at least 1'):
    tok.encode(['one'], 0)
  with pytest.raises(errors.UserError, match='max_len must be at least 3'):
    tok.encode(['one'], 2, bos=True, eos=True)
  with pytest.raises(errors.UserError, match='id 40 is outside'):
    tok.decode([[5, 40]])
  with pytest.raises(errors.UserError, match='no subword model at'):
    subword.load(str(tmp_path / 'missing.model'))
  (tmp_path / 'junk.model').write_bytes(b'not a model')
  with pytest.raises(errors.UserError, match='is not a SentencePiece model'):
    subword.load(str(tmp_path / 'junk.model'))


def test_a_model_with_other_reserved_ids_is_refused(tmp_path):
  buf = io.BytesIO()  # SentencePiece's defaults: <unk>=0, <s>=1, </s>=2
  spm.SentencePieceTrainer.train(sentence_iterator=iter(TEXTS),
                                 model_writer=buf, vocab_size=40,
                                 minloglevel=2, num_threads=1)
  path = tmp_path / 'other.model'
  path.write_bytes(buf.getvalue())
  with pytest.raises(errors.UserError, match='reserved ids'):
    subword.load(str(path))
