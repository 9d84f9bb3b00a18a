"""`generation`: text written from any modalities (captioning, answering).

The model is the run's encoders and fusion with no head, read by an
autoregressive Transformer decoder (`mmfusion.nn.decoder`) that writes the
dataset's `caption` (a caption, an answer, a transcript: token ids of the
dataset's tokenizer) after BOS and the example's `prompt` where the data has
one (a language tag, say). The decoder attends to the fused encoding by
`conditioning`:
  prefix           the memory, projected, is prepended to the text (PaLI,
                   Chen et al. 2022; CapPa, Tschannen et al. 2023);
  cross_attention  every decoder block attends to it (the encoder-decoder
                   of Vaswani et al. 2017; CoCa's multimodal decoder).
The memory (`memory`) is the fusion module's tokens (`tokens`: concat,
cross_attention, bottleneck, perceiver, and early fusion's shared encoder;
`fusion.yields_tokens`) or its pooled [B, D] output as one token (`pooled`:
any intermediate fusion). Late fusion combines per-modality predictions,
which a decoder does not have, so it does not apply.

Training is teacher-forced: BOS, the prompt and the caption, with the
padding between them squeezed out, predict the next token at every position;
the loss is the label-smoothed cross-entropy of the caption's tokens and EOS
(the prompt is given, not predicted). Evaluation and `predict` decode under
`jax.jit` with the KV cache (`mmfusion.nn.decoding`; `search`: greedy,
`beam` or `sample`) up to `max_length` tokens, prompt included (default:
what the longest prompt and caption of the data need).

The decoder's vocabulary is the dataset tokenizer's V ids with BOS = V and
EOS = V + 1 added (0 stays padding), so any tokenizer serves.

Metrics (`text_metrics`, on decoded strings against the dataset's caption):
BLEU-4 (sacrebleu), CIDEr-D, exact match and token accuracy (short
answers), WER (jiwer), and the teacher-forced loss; on every subset of
modalities too, as for classification.

Missing: the memory of an absent modality is masked out of the decoder's
attention (its tokens are invalid), as the fusion modules mask it.

Legend: B batch, P prompt, L caption, S teacher-forced sequence, V
vocabulary, M memory tokens, D width.
"""

import dataclasses
from typing import Any, Literal

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from mmfusion import fusion as fusion_lib
from mmfusion import models
from mmfusion.nn import decoder as decoder_lib
from mmfusion.nn import decoding
from mmfusion.runtime import errors
from mmfusion.tasks import base
from mmfusion.tasks import text_metrics

PAD_ID = 0
SEARCHES = ('greedy', 'beam', 'sample')


def squeeze(tokens_BxS, flags_BxS=None):
  """Each row's real (non-padding) tokens moved to its front, in order, and
  `flags_BxS` moved with them."""
  order_BxS = jnp.argsort(tokens_BxS == PAD_ID, axis=1, stable=True)
  take = lambda x: jnp.take_along_axis(x, order_BxS, axis=1)
  return take(tokens_BxS), None if flags_BxS is None else take(flags_BxS)


def start_of(prompt_BxP, bos_id: int, batch: int):
  """[B, 1 + P] BOS then the prompt's real tokens, right-padded."""
  bos_Bx1 = jnp.full((batch, 1), bos_id, jnp.int32)
  if prompt_BxP is None:
    return bos_Bx1
  return squeeze(jnp.concatenate([bos_Bx1, prompt_BxP.astype(jnp.int32)],
                                 axis=1))[0]


def teacher_forcing(prompt_BxP, caption_BxL, bos_id: int, eos_id: int):
  """(inputs_BxS, labels_BxS, weights_BxS) of BOS, prompt, caption, EOS with
  the padding squeezed out: position s reads inputs[:s+1] and predicts
  labels[s], which counts (weight 1) when it is a caption token or EOS
  (read as padding in the inputs)."""
  b = caption_BxL.shape[0]
  start_BxQ = start_of(prompt_BxP, bos_id, b)
  caption_BxL = caption_BxL.astype(jnp.int32)
  eos_Bx1 = jnp.full((b, 1), eos_id, jnp.int32)
  seq_BxS = jnp.concatenate([start_BxQ, caption_BxL, eos_Bx1], axis=1)
  is_caption_BxS = jnp.concatenate(
      [jnp.zeros(start_BxQ.shape, bool), caption_BxL != PAD_ID,
       jnp.ones((b, 1), bool)], axis=1)
  seq_BxS, is_caption_BxS = squeeze(seq_BxS, is_caption_BxS)
  inputs_BxS = seq_BxS[:, :-1]  # EOS is predicted, never read
  return (jnp.where(inputs_BxS == eos_id, PAD_ID, inputs_BxS), seq_BxS[:, 1:],
          is_caption_BxS[:, 1:].astype(jnp.float32))


@dataclasses.dataclass(frozen=True)
class Search:
  """How text is decoded (the task's `search`, `beam_size`, ...)."""
  method: str
  max_length: int
  bos_id: int
  eos_id: int
  beam_size: int = 4
  length_penalty: float = 0.6
  temperature: float = 1.0
  top_k: int = 0
  seed: int = 0

  def __call__(self, step, cache, start_BxQ):
    """tokens [B, max_length]: the start, the generated text, padding."""
    kw = dict(max_length=self.max_length, eos_id=self.eos_id, pad_id=PAD_ID)
    if self.method == 'beam':
      tokens_BxKxL, _ = decoding.beam_search(
          step, cache, start_BxQ, beam_size=self.beam_size,
          length_penalty=self.length_penalty, **kw)
      return tokens_BxKxL[:, 0]
    if self.method == 'sample':
      return decoding.sample(step, cache, start_BxQ,
                             jax.random.key(self.seed),
                             temperature=self.temperature, top_k=self.top_k,
                             **kw)
    return decoding.greedy(step, cache, start_BxQ, **kw)


class Generator(nn.Module):
  """A memory-giving MultimodalModel read by a Decoder; returns ({'logits'
  [B, S, V] (teacher-forced, where the batch has the caption), 'tokens'
  [B, max_length] (decoded, when not training), 'start' [B] (tokens of BOS
  and prompt)}, aux)."""
  body: nn.Module  # models.MultimodalModel with `memory` set
  decoder: decoder_lib.Decoder
  search: Search
  caption_key: str = 'caption'
  prompt_key: str | None = None

  @property
  def kernels(self):
    """The op set the model was built with (what `mmfusion.cost` names)."""
    return self.body.kernels

  @property
  def encoders(self):
    return self.body.encoders

  def _generate(self, memory_BxMxD, valid_BxM, start_BxQ):
    """Decoded tokens with the decoder's parameters, one while_loop."""
    variables = {'params': self.decoder.variables['params']}
    step, cache = decoder_lib.stepper(
        self.decoder.clone(parent=None), variables, memory_BxMxD, valid_BxM,
        max_length=self.search.max_length)
    return self.search(step, cache, start_BxQ)

  @nn.compact
  def __call__(self, batch, *, train: bool = False):
    (memory_BxMxD, valid_BxM), aux = self.body(batch, train=train)
    b = memory_BxMxD.shape[0]
    prompt_BxP = batch.get(self.prompt_key) if self.prompt_key else None
    start_BxQ = start_of(prompt_BxP, self.search.bos_id, b)
    out = {'start': jnp.sum(start_BxQ != PAD_ID, axis=1, dtype=jnp.int32)}
    if self.caption_key in batch:
      inputs_BxS, _, _ = teacher_forcing(
          prompt_BxP, batch[self.caption_key], self.search.bos_id,
          self.search.eos_id)
      out['logits'] = self.decoder(inputs_BxS, memory_BxMxD, valid_BxM,
                                   train=train).astype(jnp.float32)
    elif self.is_initializing():  # creates the decoder's parameters
      self.decoder(start_BxQ, memory_BxMxD, valid_BxM)
    if not train and not self.is_initializing():
      out['tokens'] = self._generate(memory_BxMxD, valid_BxM, start_BxQ)
    return out, aux


@dataclasses.dataclass(frozen=True)
class Generation(base.Task):
  """Options: the decoder (`conditioning`, `memory`, `width`, `num_layers`,
  `num_heads`, `mlp_dim`, `dropout`), the loss (`label_smoothing`) and the
  decoding (`search`, `max_length`, `beam_size`, `length_penalty`,
  `temperature`, `top_k`)."""
  conditioning: Literal['prefix', 'cross_attention'] = 'prefix'
  memory: Literal['tokens', 'pooled'] = 'tokens'
  width: int = 128
  num_layers: int = 2
  num_heads: int = 4
  mlp_dim: int = 0  # 0: 4 * width
  dropout: float = 0.0
  label_smoothing: float = 0.1
  search: str = 'greedy'
  max_length: int = 0  # 0: BOS + the longest prompt and caption + EOS
  beam_size: int = 4
  length_penalty: float = 0.6
  temperature: float = 1.0
  top_k: int = 0

  NAME = 'generation'
  METRICS = {'cider_d': 'max', 'bleu4': 'max', 'exact_match': 'max',
             'token_accuracy': 'max', 'wer': 'min', 'loss': 'min'}
  PRIMARY = 'cider_d'
  TRAIN_METRIC = 'next_token_accuracy'
  TABLE = ('cider_d', 'bleu4', 'exact_match', 'wer', 'examples')
  LATE = ()

  def __post_init__(self):
    if self.search not in SEARCHES:
      raise errors.unknown_name('task.search', self.search, SEARCHES)
    for field, low in (('beam_size', 1), ('width', 1), ('num_layers', 1),
                       ('num_heads', 1), ('max_length', 0), ('top_k', 0),
                       ('mlp_dim', 0)):
      if getattr(self, field) < low:
        raise errors.UserError(
            f'task.{field}={getattr(self, field)} must be at least {low}; '
            f'fix --config.task.{field}.')
    if self.width % self.num_heads:
      raise errors.UserError(
          f'task.width={self.width} is not a multiple of task.num_heads='
          f'{self.num_heads}; change one of them.')
    if not 0 <= self.label_smoothing < 1:
      raise errors.UserError(
          f'task.label_smoothing={self.label_smoothing} must be in [0, 1).')
    if not self.temperature > 0:
      raise errors.UserError(
          f'task.temperature={self.temperature} must be positive; use '
          f"search='greedy' for the temperature-0 limit.")

  # ------------------------------------------------- Built before a run ---
  @property
  def TARGETS(self):  # pylint: disable=invalid-name
    has_prompt = self.data is not None and 'prompt' in self.data.targets
    return ('caption', 'prompt') if has_prompt else ('caption',)

  @property
  def model_inputs(self):
    return ('prompt',) if 'prompt' in self.TARGETS else ()

  def check_data(self, data):
    if 'caption' not in data.targets:
      raise errors.UserError(
          f'task {self.name!r} writes a text target, and {data.name} has no '
          f'`caption` to learn it from; choose a dataset with text targets '
          f'(av_digits/captions, av_digits/qa) or another task.')
    prompt = data.targets.get('prompt', {}).get('length', 0)
    if self.max_length and self.max_length <= 1 + prompt:
      raise errors.UserError(
          f'task.max_length={self.max_length} is not longer than BOS and '
          f'the {prompt}-token prompt, so nothing could be generated; set '
          f'it above {1 + prompt} (or 0 for what the data needs).')

  def check_fusion(self, fusion: str, stage: str):
    if stage == 'late':
      raise errors.UserError(
          f'late fusion {fusion!r} combines per-modality predictions, which '
          f'a text decoder does not make; use an early or intermediate '
          f'fusion.')
    if self.memory == 'tokens' and not fusion_lib.yields_tokens(fusion):
      tokened = [n for n in fusion_lib.FUSIONS if fusion_lib.yields_tokens(n)]
      raise errors.UserError(
          f'fusion {fusion!r} gives a pooled vector, not tokens; set '
          f"task.memory='pooled' to read it as one token, or use one of "
          f'{", ".join(tokened)}.')

  @property
  def vocab_size(self) -> int:
    """The dataset tokenizer's ids, then BOS and EOS."""
    return self.data.text_tokenizer().vocab_size + 2

  @property
  def num_outputs(self) -> int:
    """The decoder's output width: its vocabulary."""
    return self.vocab_size

  @property
  def bos_id(self) -> int:
    return self.vocab_size - 2

  @property
  def eos_id(self) -> int:
    return self.vocab_size - 1

  def length(self) -> int:
    """Decoded tokens per example, BOS and prompt included."""
    if self.max_length:
      return self.max_length
    t = self.data.targets
    return 1 + t.get('prompt', {}).get('length', 0) + t['caption']['length'] + 1

  def model(self, model_config):
    body = models.from_config(model_config, 0, memory=self.memory)
    n = self.length()
    decoder = decoder_lib.Decoder(
        vocab_size=self.vocab_size, features=self.width,
        num_layers=self.num_layers, num_heads=self.num_heads,
        mlp_dim=self.mlp_dim or None, conditioning=self.conditioning,
        max_positions=n, dropout=self.dropout, dtype=body.dtype,
        kernels=body.kernels)
    search = Search(self.search, n, self.bos_id, self.eos_id,
                    beam_size=self.beam_size,
                    length_penalty=self.length_penalty,
                    temperature=self.temperature, top_k=self.top_k)
    return Generator(body, decoder, search,
                     prompt_key='prompt' if 'prompt' in self.TARGETS else None)

  # ----------------------------------------------- Inside the jitted step ---
  def _token_losses(self, out, batch):
    """(cross-entropy [B, S], weights [B, S], correct [B, S])."""
    _, labels_BxS, w_BxS = teacher_forcing(
        batch.get('prompt') if 'prompt' in self.TARGETS else None,
        batch['caption'], self.bos_id, self.eos_id)
    logits_BxSxV = out['logits']
    one_hot = jax.nn.one_hot(labels_BxS, logits_BxSxV.shape[-1])
    ce_BxS = optax.softmax_cross_entropy(
        logits_BxSxV, optax.smooth_labels(one_hot, self.label_smoothing))
    correct_BxS = (logits_BxSxV.argmax(-1) == labels_BxS).astype(jnp.float32)
    return ce_BxS, w_BxS, correct_BxS

  def loss(self, out, batch):
    ce_BxS, w_BxS, correct_BxS = self._token_losses(out, batch)
    n = jnp.maximum(w_BxS.sum(), 1.0)
    return (jnp.sum(ce_BxS * w_BxS) / n,
            {'next_token_accuracy': jnp.sum(correct_BxS * w_BxS) / n})

  def per_example(self, out, batch):
    ce_BxS, w_BxS, _ = self._token_losses(out, batch)
    return {'tokens': out['tokens'], 'start': out['start'],
            'loss': jnp.sum(ce_BxS * w_BxS, 1) / jnp.maximum(w_BxS.sum(1), 1)}

  def outputs_of(self, gathered):
    return self.outputs(gathered)

  def outputs(self, out):
    return {'tokens': out['tokens'], 'start': out['start']}

  # ---------------------------------------------------------- On the host ---
  def texts(self, tokens_NxL, start_N) -> list[str]:
    """The generated text of each row: after its start, up to EOS."""
    tok = self.data.text_tokenizer()
    rows = []
    for row, s in zip(np.asarray(tokens_NxL), np.asarray(start_N)):
      row = row[int(s):]
      end = np.flatnonzero(row == self.eos_id)
      row = row[:end[0]] if end.size else row
      rows.append(row[(row != PAD_ID) & (row < self.bos_id)])
    return [tok.decode(r[None])[0] for r in rows]

  def scores(self, gathered, targets, *, detail=True):
    hyps = self.texts(gathered['tokens'], gathered['start'])
    refs = self.data.text_tokenizer().decode(targets['caption'])
    return {**text_metrics.generation(hyps, refs),
            'loss': float(np.mean(gathered['loss']))}

  def mean_outputs(self, outputs_K):
    raise errors.UserError(
        'a generation ensemble has no mean text; load one member '
        '(member=K, or --member=K) to decode its captions.')

  def rows(self, outputs, ids):
    texts = self.texts(outputs['tokens'], outputs['start'])
    return [{'id': base.plain(i), 'prediction': t} for i, t in zip(ids, texts)]
