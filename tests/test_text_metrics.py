"""Text-generation metrics: coco-caption's numbers and hand-worked cases."""

import math

import pytest

from mmfusion.runtime import errors
from mmfusion.tasks import text_metrics as tm

# Six images with 2-4 references each, and one caption per image to score.
REFS = [
    ['A man is riding a horse on the beach.',
     'A person rides a brown horse along the shore.',
     'Someone riding a horse by the ocean.'],
    ['Two dogs play with a red ball in the grass.',
     'Two puppies are playing with a ball.',
     'A pair of dogs chase a red ball on a lawn.',
     'Dogs playing in a green field.'],
    ['A plate of food with broccoli and rice.',
     'Rice, chicken and broccoli on a white plate.'],
    ['A woman holds an umbrella in the rain.',
     'A lady with an umbrella walks down a wet street.',
     'Woman walking in the rain under a black umbrella.'],
    ['A cat sleeping on a laptop keyboard.',
     'A gray cat lies on top of an open laptop.'],
    ['A red double decker bus on a city street.',
     'A bus driving down the road in London.',
     'The red bus is parked next to the sidewalk.'],
]
HYPS = [
    'A man riding a horse on the beach.',
    'Two dogs playing with a ball.',
    'A plate of rice and broccoli.',
    'A woman with an umbrella.',
    'A dog sitting on a couch.',
    'A red bus driving down a city street.',
]
# coco-caption's numbers for REFS/HYPS: pycocoevalcap 1.2 with its Java
# Stanford PTB tokenizer, `Cider().compute_score` and
# `Bleu(4).compute_score(...)[0][3]`, run once by hand. On these captions the
# PTB tokens equal `caption_tokens`.
COCO_CIDER_D = 2.0603187175911684
COCO_BLEU4 = 0.41036872245668765  # coco-caption's 0-1 scale


def test_cider_d_and_bleu4_equal_coco_caption():
  got = tm.generation(HYPS, REFS)
  assert got['cider_d'] == pytest.approx(COCO_CIDER_D, rel=1e-12)
  # sacrebleu 0-100; coco-caption adds 1e-9 / 1e-15 guards to its counts.
  assert got['bleu4'] == pytest.approx(100 * COCO_BLEU4, abs=1e-6)
  assert got['examples'] == 6
  assert all(type(v) is float for k, v in got.items() if k != 'examples')


def test_cider_d_hand_worked():
  # N = 2 images, each n-gram in one of them: idf = log 2 for all. Image 1
  # is its reference: cosine 1 for unigrams and bigrams, 0 for 3- and
  # 4-grams (none), so 10 * 2/4. Image 2 ("c" vs "c d"): unigram cosine
  # 1/sqrt(2), no bigram, damped by exp(-1/72) for a gap of 1 (coco-caption
  # measures length in bigrams).
  want = (10 * 2 / 4 + 10 * (1 / math.sqrt(2)) * math.exp(-1 / 72) / 4) / 2
  assert tm.cider_d(['a b', 'C.'], [['a b'], ['c d']]) == pytest.approx(want)


def test_identical_captions_score_the_maximum():
  hyps = [refs[0] for refs in REFS]
  refs = [[h, h.upper()] for h in hyps]  # case and punctuation do not count
  got = tm.generation(hyps, refs)
  assert got['cider_d'] == pytest.approx(10.0)
  assert got['bleu4'] == pytest.approx(100.0)
  assert got['exact_match'] == got['token_accuracy'] == 1.0
  assert got['wer'] == 0.0


def test_cider_d_needs_a_corpus():
  # One image: every n-gram is in all (one) images' references, idf 0.
  assert tm.cider_d([HYPS[0]], [REFS[0]]) == 0.0
  assert tm.cider_d(['a dog'], [['!']]) == 0.0  # no reference n-gram at all


def test_bleu4_variable_references_and_no_4gram_match():
  assert tm.bleu4(HYPS[:2], [REFS[0][:1], REFS[1]]) > 0
  assert tm.bleu4(['a b c d e'], [['a b c x e', 'z']]) == 0.0


def test_wer_hand_computed():
  refs = [['The cat sat on the mat.', 'ignored second reference'],
          'hello world']
  # 1 substitution (sat->sit) + 1 deletion (the), then 1 insertion (big)
  # over 6 + 2 reference words.
  assert tm.wer(['the cat SIT on mat', 'hello big world'], refs) == 3 / 8
  assert tm.wer(['a b'], ['a b c d']) == 0.5
  assert math.isnan(tm.wer(['words'], ['...']))


def test_exact_match_uses_squad_normalisation():
  hyps = ['The Eiffel Tower!', 'three', 'two', 'an apple']
  refs = ['eiffel tower', ['3', 'Three.'], 'three', 'apple pie']
  assert tm.exact_match(hyps, refs) == 2 / 4


def test_token_accuracy_is_position_wise():
  hyps = ['three seven one', 'three seven', 'a cat', 'one two']
  refs = ['three one seven', 'three seven one', 'cat', ['two', 'one two']]
  # 1/3 (order), 2/3 (missing word), 1 (article), 1 (closest reference).
  assert tm.token_accuracy(hyps, refs) == pytest.approx((1/3 + 2/3 + 1 + 1) / 4)
  assert tm.token_accuracy([''], ['the']) == 1.0  # both empty after SQuAD


@pytest.mark.parametrize('hyps, refs, match', [
    (['a', 'b'], [['a']], '2 hypotheses but 1 reference'),
    (['a'], [[]], 'example 0 has an empty reference list'),
    ('a cat', ['a cat'], 'not a single string'),
    (['a', 3], ['a', 'b'], 'example 1 holds a int'),
    ([], [], 'no hypotheses'),
])
def test_bad_input_is_one_sentence(hyps, refs, match):
  for fn in (tm.generation, tm.bleu4, tm.cider_d, tm.wer, tm.exact_match):
    with pytest.raises(errors.UserError, match=match):
      fn(hyps, refs)
