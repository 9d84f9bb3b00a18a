"""Text-generation metrics on decoded strings: BLEU-4 (sacrebleu), CIDEr-D
(written here: pycocoevalcap's package is 104 MB of Java jars around 50 lines
of Python), exact match, token accuracy and WER (jiwer).

Each function takes `hyps`, one generated string per example, and `refs`, for
each example its reference string or a non-empty list of them, and returns a
plain float; `generation` returns all of them in one dict, with `examples`.
The packages are imported inside the functions, like scikit-learn in
`metrics.py`, so command-line start-up stays quick.

Two normalisations come first:
  * captions and transcripts (BLEU-4, CIDEr-D, WER): lower case, every
    character that is neither a letter, a digit nor a space turned into a
    space, then split on whitespace. coco-caption uses the Java Stanford PTB
    tokenizer with punctuation removed instead. The two agree on plain
    captions. They differ on clitics and hyphens ("dog's" is `dog s` here and
    `dog 's` there; "t-shirt" is `t shirt` here and `t-shirt` there), so
    scores on such captions move slightly from coco-caption's.
  * short answers (exact match, token accuracy): SQuAD v1.1's evaluation
    normalisation: lower case, ASCII punctuation deleted, the articles a / an
    / the removed, whitespace collapsed.
"""

import collections
import math
import re
import string
from typing import Sequence

import numpy as np

from mmfusion.runtime import errors

_NOT_WORD = re.compile(r'[^\w\s]|_')
_ARTICLES = re.compile(r'\b(a|an|the)\b')
_PUNCTUATION = str.maketrans('', '', string.punctuation)


def caption_tokens(text: str) -> list[str]:
  """Lower-cased words with punctuation removed (captions, transcripts)."""
  return _NOT_WORD.sub(' ', text.lower()).split()


def answer_tokens(text: str) -> list[str]:
  """SQuAD v1.1's normalised answer, as words."""
  return _ARTICLES.sub(' ', text.lower().translate(_PUNCTUATION)).split()


def checked(hyps, refs) -> tuple[list[str], list[list[str]]]:
  """`hyps` as a list and `refs` as one non-empty list per hypothesis."""
  if isinstance(hyps, str) or isinstance(refs, str):
    raise errors.UserError(
        'hyps and refs must be lists with one entry per example, not a '
        'single string; wrap one example in a list.')
  hyps, refs = list(hyps), list(refs)
  if len(hyps) != len(refs):
    raise errors.UserError(
        f'got {len(hyps)} hypotheses but {len(refs)} reference entries; give '
        f'one reference string or list of them per hypothesis.')
  if not hyps:
    raise errors.UserError('there are no hypotheses to score; give at least '
                           'one example.')
  refs = [[r] if isinstance(r, str) else list(r) for r in refs]
  for i, (hyp, ref) in enumerate(zip(hyps, refs)):
    if not ref:
      raise errors.UserError(
          f'example {i} has an empty reference list; give every hypothesis '
          f'at least one reference string.')
    bad = [x for x in (hyp, *ref) if not isinstance(x, str)]
    if bad:
      raise errors.UserError(
          f'example {i} holds a {type(bad[0]).__name__} where a string '
          f'belongs; decode ids to text before scoring.')
  return hyps, refs


def bleu4(hyps, refs) -> float:
  """Corpus BLEU-4 (Papineni et al. 2002) from sacrebleu, 0-100.

  The text is tokenized by `caption_tokens` and sacrebleu is called with
  `tokenize='none'`: the same tokens as CIDEr-D and coco-caption's BLEU
  (lower case, no punctuation), rather than sacrebleu's default `13a`, which
  counts a caption's final full stop as a matched word. No smoothing, as
  coco-caption computes it (sacrebleu's signature `case:mixed|eff:no|
  tok:none|smooth:none`, on text already lower-cased). So a corpus with no
  matching 4-gram scores 0. The brevity penalty uses the closest reference
  length, as in coco-caption, which gives the same number to 1e-6.
  """
  from sacrebleu.metrics import bleu  # pylint: disable=g-import-not-at-top
  hyps, refs = checked(hyps, refs)
  width = max(len(r) for r in refs)
  streams = [[' '.join(caption_tokens(r[k])) if k < len(r) else None
              for r in refs] for k in range(width)]
  metric = bleu.BLEU(tokenize='none', smooth_method='none')
  return float(metric.corpus_score(
      [' '.join(caption_tokens(h)) for h in hyps], streams).score)


def _ngrams(words: list[str], n_max: int = 4) -> collections.Counter:
  """Counts of the word n-grams of `words`, n = 1..n_max."""
  return collections.Counter(tuple(words[i:i + n]) for n in range(
      1, n_max + 1) for i in range(len(words) - n + 1))


def _tfidf(counts, df, log_n):
  """coco-caption's `counts2vec`: per n, {n-gram: tf x idf}, the vectors'
  norms, and the length (in bigrams, as coco-caption counts it)."""
  vec = [{} for _ in range(4)]
  norm = np.zeros(4)
  for gram, tf in counts.items():
    n = len(gram) - 1
    vec[n][gram] = tf * (log_n - math.log(max(1.0, df[gram])))
    norm[n] += vec[n][gram] ** 2
  return vec, np.sqrt(norm), sum(tf for g, tf in counts.items()
                                 if len(g) == 2)


def cider_d(hyps, refs, sigma: float = 6.0) -> float:
  """CIDEr-D (Vedantam et al. 2015) on coco-caption's scale, written as
  coco-caption's `CiderScorer` computes it (checked against pycocoevalcap 1.2
  in tests/test_text_metrics.py).

  It is the mean over examples of 10 x the average over n = 1..4 of the
  clipped TF-IDF cosine between the hypothesis and each reference. The
  cosine is damped by exp(-d^2 / (2 sigma^2)) for a length gap d (sigma =
  6); coco-caption counts the length in bigrams. The IDF comes from the
  references of these examples, so the score depends on the corpus: on one
  example, or for n-grams in every example's references, the weight
  log(N / df) is 0. A hypothesis identical to all of its references
  reaches the maximum, 10, when it has 4 or more words and, for each n, an
  n-gram that some example's references lack.
  """
  hyps, refs = checked(hyps, refs)
  ref_counts = [[_ngrams(caption_tokens(r)) for r in ref] for ref in refs]
  df = collections.Counter(g for counts in ref_counts
                           for g in set().union(*counts))
  log_n = math.log(len(hyps))
  scores = []
  for hyp, counts in zip(hyps, ref_counts):
    vec, norm, length = _tfidf(_ngrams(caption_tokens(hyp)), df, log_n)
    total = np.zeros(4)
    for ref in counts:
      vec_r, norm_r, length_r = _tfidf(ref, df, log_n)
      for n in range(4):
        val = sum(min(v, vec_r[n].get(g, 0.0)) * vec_r[n].get(g, 0.0)
                  for g, v in vec[n].items())
        if norm[n] and norm_r[n]:
          val /= norm[n] * norm_r[n]
        total[n] += val * math.exp(-(length - length_r) ** 2 /
                                   (2 * sigma ** 2))
    scores.append(10.0 * total.mean() / len(counts))
  return float(np.mean(scores))


def exact_match(hyps, refs) -> float:
  """The fraction of hypotheses equal to one of their references, after
  SQuAD's answer normalisation."""
  hyps, refs = checked(hyps, refs)
  return sum(max(answer_tokens(h) == answer_tokens(r) for r in ref)
             for h, ref in zip(hyps, refs)) / len(hyps)


def _position_accuracy(hyp: Sequence[str], ref: Sequence[str]) -> float:
  """Tokens equal at the same position over the longer length; 1 if both
  are empty. A missing, extra or misplaced word counts as wrong."""
  if not hyp and not ref:
    return 1.0
  return sum(h == r for h, r in zip(hyp, ref)) / max(len(hyp), len(ref))


def token_accuracy(hyps, refs) -> float:
  """Position-wise token accuracy of short answers, with SQuAD's
  normalisation, against the closest reference, averaged over examples.

  Order matters here, unlike SQuAD's bag-of-words F1: "three seven one"
  against "three one seven" scores 1/3.
  """
  hyps, refs = checked(hyps, refs)
  return sum(max(_position_accuracy(answer_tokens(h), answer_tokens(r))
                 for r in ref) for h, ref in zip(hyps, refs)) / len(hyps)


def wer(hyps, refs) -> float:
  """Corpus word error rate from jiwer: (substitutions + deletions +
  insertions) / reference words, on `caption_tokens`, against each example's
  first reference (transcripts have one). It is nan when the references have
  no words at all. It can exceed 1.
  """
  import jiwer  # pylint: disable=g-import-not-at-top
  hyps, refs = checked(hyps, refs)
  out = jiwer.process_words([' '.join(caption_tokens(r[0])) for r in refs],
                            [' '.join(caption_tokens(h)) for h in hyps])
  if not out.hits + out.substitutions + out.deletions:
    return float('nan')
  return float(out.wer)


def generation(hyps, refs) -> dict:
  """All of the metrics above, keyed by name, and the example count."""
  hyps, refs = checked(hyps, refs)
  return {
      'bleu4': bleu4(hyps, refs),
      'cider_d': cider_d(hyps, refs),
      'exact_match': exact_match(hyps, refs),
      'token_accuracy': token_accuracy(hyps, refs),
      'wer': wer(hyps, refs),
      'examples': len(hyps),
  }
