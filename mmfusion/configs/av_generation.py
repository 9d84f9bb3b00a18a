"""Captioning and question answering on av_digits clips (task `generation`).

  captions  write the digits that are seen and heard, in the language the
            prompt tag asks for ("<fr>" -> "trois sept un"): video + audio
  qa        answer a question about the clip ("what is the second digit
            spoken?", "is the sound in sync with the picture?", ...): the
            question is the text modality, with video and audio; test
            asks in held-out phrasings (test_seen in the trained ones)

Encoders: video 9 frames -> per-frame CNN -> one Transformer token per
frame; audio 2.25 s -> log-mel CNN tokens over time; text (the question)
subword ids -> GRU. The fusion's tokens are the memory of a 2-layer decoder
(width 128) over the dataset's SentencePiece vocabulary.

  --config=mmfusion/configs/av_generation.py:captions
  --config=mmfusion/configs/av_generation.py:qa
  --config=mmfusion/configs/av_generation.py:captions,fusion=cross_attention
  --config=mmfusion/configs/av_generation.py:captions,fusion=gated,memory=pooled
  --config=mmfusion/configs/av_generation.py:captions,modalities=video
  --config=mmfusion/configs/av_generation.py:qa,modalities=text+audio
  --config=mmfusion/configs/av_generation.py:qa,conditioning=cross_attention
  --config=mmfusion/configs/av_generation.py:captions,runlocal  seconds-long
  --config.task.search=beam --config.task.beam_size=4   decode by beam search
"""

import ml_collections

from mmfusion.configs import av_digits
from mmfusion.configs import common

VARIANTS = ('captions', 'qa')
MODALITIES = ('video', 'audio', 'text')
DEFAULT = {'captions': 'video+audio', 'qa': 'video+audio+text'}
KEYS = ('variant', 'modalities', 'fusion', 'memory', 'conditioning')
BEST = {'captions': 'cider_d', 'qa': 'exact_match'}


def encoders():
  """av_digits' encoders; the video's per-frame tokens keep the order."""
  return {m: e for m, e in av_digits.encoders().items() if m in MODALITIES}


def parse(arg: str) -> dict:
  """{key: value} of `arg`: a bare variant or `runlocal`, or key=value."""
  args = [a for a in (arg or '').split(',') if a]
  named = dict(a.split('=', 1) for a in args if '=' in a)
  bare = [a for a in args if '=' not in a]
  for a in bare:
    named.setdefault('variant' if a in VARIANTS else a, a)
  variant = named.setdefault('variant', 'captions')
  named.setdefault('modalities', DEFAULT.get(variant, ''))
  modalities = named['modalities'].split('+')
  if (variant not in VARIANTS or set(named) - set(KEYS) - {'runlocal'} or
      any(m not in MODALITIES for m in modalities) or
      (variant == 'captions' and 'text' in modalities) or
      named.get('memory', 'tokens') not in ('tokens', 'pooled') or
      named.get('conditioning', 'prefix') not in ('prefix',
                                                  'cross_attention')):
    raise ValueError(
        f'config arg {arg!r}: expected a variant in {VARIANTS}, modalities '
        f'from {MODALITIES} joined by + (text, the question, for qa only), '
        f'fusion=NAME, memory=tokens|pooled, conditioning=prefix|'
        f'cross_attention, or runlocal')
  return named


def get_config(arg: str = ''):
  named = parse(arg)
  variant = named['variant']
  modalities = tuple(named['modalities'].split('+'))

  config = ml_collections.ConfigDict()
  config.seed = 0
  config.batch_size = 32
  config.total_steps = 1500
  config.eval_every = 500
  config.checkpoint_every = 500
  config.log_every = 100
  config.num_devices = 0
  common.add_run_options(config)
  config.task = ml_collections.ConfigDict({
      'name': 'generation',
      'conditioning': named.get('conditioning', 'prefix'),
      'memory': named.get('memory', 'tokens'),
      'width': 128, 'num_layers': 2, 'num_heads': 4, 'label_smoothing': 0.1,
      'search': 'greedy', 'beam_size': 4})
  config.best_metric = BEST[variant]

  config.data = ml_collections.ConfigDict()
  config.data.name = f'av_digits/{variant}'
  config.data.modalities = modalities
  config.data.data_dir = ml_collections.config_dict.placeholder(str)
  config.data.overrides = {}
  config.data.modality_dropout = {}
  config.data.augment = {}
  config.data.extra_eval_splits = ('test_seen',) if variant == 'qa' else ()

  config.model = ml_collections.ConfigDict()
  config.model.fusion = named.get('fusion', 'concat')
  config.model.fusion_kwargs = {}
  config.model.encoders = {m: e for m, e in encoders().items()
                           if m in modalities}
  config.model.early_encoder = {'name': 'mlp', 'features': 64}
  config.model.head_hidden = ()
  common.add_model_options(config.model)
  config.optimizer = common.adamw(grad_clip_norm=1.0)

  if 'runlocal' in named:
    config.total_steps = 6
    config.eval_every = config.checkpoint_every = 3
    config.log_every = 3
    config.optimizer.warmup_steps = 2
    config.batch_size = 8
    config.data.overrides = {
        'num_train': 200, 'num_validation': 16, 'num_test': 16,
        'train_speakers': 2, 'eval_speakers': 1}
    config.task.width = 32
  return config
