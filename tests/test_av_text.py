"""The av_digits captions and qa configs: texts right for their clips, held-out
templates, the subword vocabulary, determinism and one-sentence errors."""

import os
import re

import ml_collections
import numpy as np
import pytest

from mmfusion.runtime import errors
from mmfusion.data import av_digits
from mmfusion.data import av_text
from mmfusion.data import pipeline
from mmfusion.data import subword
from mmfusion.data import tokenizer
from tests.test_av_digits import _arrays, _built

TINY = {'num_train': 60, 'num_validation': 8, 'num_test': 12,
        'train_speakers': 2, 'eval_speakers': 1}
# 60 captions leave some of the 70 words unseen, spelled out in more than 8
# pieces; 200 teach the vocabulary every word.
TINY_CAPTIONS = {**TINY, 'num_train': 200}
EN = av_digits.WORDS['en']


def _config(name, data_dir, **overrides):
  return ml_collections.ConfigDict({'name': f'av_digits/{name}',
                                    'data_dir': data_dir,
                                    'overrides': overrides})


def _shown(ex, i):
  return ex['digits'][i][:ex['num_digits'][i]].tolist()


def _spoken(ex, i):
  return [d for d in ex['spoken'][i].tolist() if d >= 0]


@pytest.fixture(scope='module')
def captions(data_dir):
  return _built('captions', data_dir, **TINY_CAPTIONS)


@pytest.fixture(scope='module')
def qa(data_dir):
  return _built('qa', data_dir, **TINY)


def test_caption_is_the_shown_digits_in_the_prompted_language(captions):
  sizes = {s: captions.info.splits[s].num_examples
           for s in captions.info.splits}
  assert sizes == {'train': 200, 'validation': 8, 'test': 12}
  tok = captions.text_tokenizer()
  languages = list(av_digits.WORDS)
  for split in sizes:
    ex = _arrays(captions, split)
    n = sizes[split]
    assert ex['video'].shape == (n, 9, 32, 32, 1)
    assert ex['video'].dtype == np.uint8
    assert ex['audio'].shape == (n, 36_000)
    assert ex['audio'].dtype == np.float32
    assert ex['prompt'].shape == (n, 2) and ex['caption'].shape == (n, 8)
    for key in ('prompt', 'caption', 'digits'):
      assert ex[key].dtype == np.int32, key
    for key in ('num_digits', 'language', 'voice'):  # read back as ints
      feature = captions.info.features[key]
      assert feature.shape == () and feature.np_dtype == np.int32, key
    assert ex['digits'].shape == (n, 3)
    assert set(ex['num_digits']) <= {1, 2, 3}
    prompts, texts = tok.decode(ex['prompt']), tok.decode(ex['caption'])
    for i in range(n):
      lang = languages[ex['language'][i]]
      assert prompts[i] == f'<{lang}>'
      assert texts[i] == ' '.join(av_digits.WORDS[lang][d]
                                  for d in _shown(ex, i))
      assert (ex['digits'][i][ex['num_digits'][i]:] == -1).all()
    # Each digit is on screen for 3 of the 9 frames, never two at once.
    lit_B = (ex['video'].reshape(n, 9, -1).max(-1) > 0).sum(1)
    assert (lit_B <= 3 * ex['num_digits']).all() and (lit_B > 0).all()
  train = _arrays(captions, 'train')
  assert set(train['num_digits']) == {1, 2, 3}
  assert len(set(train['language'])) >= 5


def _question_regex(template: str) -> str:
  return re.escape(template).replace(r'\{ordinal\}', '(?P<ordinal>[a-z]+)')


def test_every_answer_is_right_for_its_question(qa):
  tok = qa.text_tokenizer()
  types = list(av_text.QUESTION_TYPES)
  seen, heard_off_screen = set(), ([], [])
  for split in ('train', 'validation', 'test_seen', 'test'):
    ex = _arrays(qa, split)
    n = len(ex['voice'])
    assert ex['text'].shape == (n, 16) and ex['caption'].shape == (n, 8)
    assert ex['video'].shape == (n, 9, 32, 32, 1)
    assert ex['spoken'].shape == ex['digits'].shape == (n, 3)
    assert ex['text'].dtype == ex['spoken'].dtype == np.int32
    questions, answers = tok.decode(ex['text']), tok.decode(ex['caption'])
    # Words are loud where a digit is on screen, but for an extra one.
    lit_BxT = ex['video'].reshape(n, 9, -1).max(-1) > 0
    energy_BxT = np.sqrt(np.mean(ex['audio'].reshape(n, 9, -1) ** 2, -1))
    loud_BxT = energy_BxT > 0.25 * energy_BxT.max(1, keepdims=True)
    outside_B = (loud_BxT & ~lit_BxT).any(1)
    assert (lit_BxT.sum(1) <= 3 * ex['num_digits']).all()
    for i in range(n):
      name = types[ex['question_type'][i]]
      template = av_text.QUESTION_TYPES[name][ex['template'][i]]
      match = re.fullmatch(_question_regex(template), questions[i])
      assert match, (questions[i], template)
      shown, spoken, answer = _shown(ex, i), _spoken(ex, i), answers[i]
      extra = len(spoken) - len(shown)
      assert extra in (0, 1) and len(spoken) <= 3
      if extra:  # the shown digits in order, and one more said between
        gap = next((j for j, d in enumerate(shown) if spoken[j] != d),
                   len(shown))
        assert spoken[:gap] + spoken[gap + 1:] == shown
        assert spoken[gap] not in shown
      assert ex['sync'][i] == 1 or name == 'sync'
      if name == 'ordinal_shown':
        assert answer == EN[shown[av_text.ORDINALS.index(match['ordinal'])]]
      elif name == 'ordinal_spoken':
        assert answer == EN[spoken[av_text.ORDINALS.index(match['ordinal'])]]
      elif name == 'count':
        assert answer == EN[len(shown)]
      elif name == 'sync':
        assert not extra and len(shown) in (1, 2)
        assert answer == ('yes' if ex['sync'][i] else 'no')
      else:
        assert extra and answer == EN[spoken[gap]]
      seen.add((name, extra))
      if ex['sync'][i]:
        heard_off_screen[extra].append(outside_B[i])
  assert not any(heard_off_screen[0]) and np.mean(heard_off_screen[1]) > 0.6
  # Ordinal and count clips come with and without an extra spoken word.
  assert {('ordinal_shown', 1), ('ordinal_spoken', 0), ('count', 1),
          ('sync', 0), ('extra', 1)} <= seen
  train = _arrays(qa, 'train')
  sync_q = train['question_type'] == types.index('sync')
  assert set(train['sync'][sync_q]) == {0, 1}


def test_held_out_templates_are_asked_only_in_test(qa):
  scalars = ('question_type', 'template', 'num_digits', 'sync', 'voice')
  assert all(qa.info.features[k].np_dtype == np.int32 for k in scalars)
  assert qa.info.splits['test_seen'].num_examples == 12
  for split in ('train', 'validation', 'test_seen'):
    assert set(_arrays(qa, split)['template']) == {0, 1}, split
  assert set(_arrays(qa, 'test')['template']) == {av_text.HELD_OUT}
  assert len(set(_arrays(qa, 'test')['question_type'])) >= 3
  # Held-out questions read only characters the training templates have.
  train_chars = set(''.join(t for ts in av_text.QUESTION_TYPES.values()
                            for t in ts[:av_text.HELD_OUT]))
  held = ''.join(ts[av_text.HELD_OUT]
                 for ts in av_text.QUESTION_TYPES.values())
  assert set(held) <= train_chars | {'{', '}'}


def test_subword_model_is_saved_and_round_trips(captions, qa):
  for builder in (captions, qa):
    path = os.path.join(builder.data_dir, subword.MODEL_FILE)
    assert os.path.isfile(path)
    tok = builder.text_tokenizer()
    assert tok.vocab_size <= 128
    assert tok.model == subword.load(path).model
    texts = ['trois sept un', 'how many digits are shown?']
    if builder is captions:
      assert [tok.piece_id(t) for t in av_text.TAGS] == list(range(4, 11))
      texts = ['<fr>', 'trois sept un', 'vier null acht']
    assert tok.decode(tok.encode(texts, 16)) == texts
  # Captions and questions have vocabularies of their own.
  assert captions.text_tokenizer().model != qa.text_tokenizer().model


def test_building_twice_gives_identical_files(qa, tmp_path):
  again = _built('qa', str(tmp_path), **TINY)
  for split in qa.info.splits:
    a, b = _arrays(qa, split), _arrays(again, split)
    assert a.keys() == b.keys()
    for k in a:
      np.testing.assert_array_equal(a[k], b[k], err_msg=f'{split}/{k}')
  assert again.text_tokenizer().model == qa.text_tokenizer().model


def test_bytes_text_needs_room_for_every_word(tmp_path):
  # The texts are checked before any clip is rendered: this fails at once.
  with pytest.raises(errors.UserError, match=r"^caption_length=8 is too "
                     r"short for '[^']+' \(\d+ tokens\); set "
                     r'data.overrides.caption_length to at least \d+\.$'):
    _built('captions', str(tmp_path), **TINY, text_tokenizer='bytes',
           prompt_length=4)
  assert not [f for _, _, fs in os.walk(tmp_path) for f in fs
              if 'array_record' in f]
  c = pipeline.get_builder(_config(
      'captions', str(tmp_path), **TINY, text_tokenizer='bytes',
      prompt_length=4, caption_length=32)).builder_config
  plans = av_text.plans(c, 'train', 60)
  ids = av_text.encoded(c, plans, tokenizer.ByteTokenizer())
  for key in ('prompt', 'caption'):
    assert tokenizer.ByteTokenizer().decode(ids[key]) == [
        dict(p.texts)[key] for p in plans]


@pytest.mark.parametrize('name, overrides, says', [
    ('captions', {'digit_counts': (0, 3)}, 'digit_counts'),
    ('captions', {'digit_counts': (1, 4)}, 'do not fit in num_frames=9'),
    ('qa', {'digit_counts': (2, 2)}, "'extra' questions"),
    ('qa', {'digit_counts': (3, 3)}, "'extra' questions"),
    ('qa', {'min_shift': 7}, 'sync questions would have no shifted clips'),
    ('captions', {'text_tokenizer': 'all-MiniLM-L6-v2'}, "'subword' or"),
    ('captions', {'vocab_size': 8}, 'vocab_size must be above 11'),
    ('qa', {'question_length': 0}, 'question_length must be at least 1'),
    ('video', {'text_tokenizer': 'subword'}, 'captions and qa'),
])
def test_impossible_options_are_one_sentence(data_dir, name, overrides, says):
  with pytest.raises(errors.UserError, match=re.escape(says)) as e:
    pipeline.get_builder(_config(name, data_dir, **TINY, **overrides))
  assert '\n' not in str(e.value) and str(e.value).endswith('.')


def test_a_caption_length_too_short_fails_the_build(tmp_path):
  with pytest.raises(errors.UserError, match=r"^caption_length=2 is too "
                     r"short for '[^']+' \(\d+ tokens\); set "
                     r'data.overrides.caption_length to at least \d+\.$'):
    _built('captions', str(tmp_path), **TINY, caption_length=2)
