"""Tux Paint's stamps (`tuxpaint`): which of 16 categories a stamp is in,
from its picture, its caption and its spoken description.

image 64x64 -> 3-stage CNN; caption bytes -> GRU; 3 s of speech -> log-mel
CNN; mean-pooled tokens, concatenated, Dense(16). Sized for a 2-core CPU.
Needs the stamps: `make tuxpaint` unpacks them into ~/.cache/mmfusion/tuxpaint.

The captions are English; the speech is French by default, because only 65
of the 796 stamps have an English description recorded and 767 a French one
(see mmfusion/data/tuxpaint.py for the counts).

  --config=mmfusion/configs/tuxpaint.py                 all three
  --config=mmfusion/configs/tuxpaint.py:image           one modality alone
  --config=mmfusion/configs/tuxpaint.py:image+text      any subset
  --config=mmfusion/configs/tuxpaint.py:speech=en       English speech (65
      stamps; the others' audio is absent, present/audio False)
  --config=mmfusion/configs/tuxpaint.py:caption=de      German captions;
      caption=random draws a locale per stamp
  --config=mmfusion/configs/tuxpaint.py:stamps=DIR      another unpacked copy
  --config=mmfusion/configs/tuxpaint.py:runlocal        a seconds-long run
      (32x32 images, 1 s of speech, 20 steps)
  --config.model.fusion=gated                           another fusion

Retrieval (`task=retrieval`, the contrastive task, CLIP's InfoNCE): two
towers, the first modality against the rest; recall@1/5/10 over the split.
  --config=mmfusion/configs/tuxpaint.py:image+text,task=retrieval
      picture <-> English caption (zero-shot category accuracy from the
      category names as captions, too)
  --config=mmfusion/configs/tuxpaint.py:image+audio,task=retrieval
      picture <-> French spoken description
  --config=mmfusion/configs/tuxpaint.py:audio+text,task=retrieval
      cross-lingual: French speech <-> English caption; speech=LANG and
      caption=LOCALE pick the two languages (caption=random: any of each
      stamp's)
A stamp with no recording in the chosen language takes no part in speech
retrieval (present/audio False).

Pretrained encoders (`pretrained=` modalities joined by +, fine-tuned at a
tenth of the rate, or `finetune=frozen`), as in av_digits: EfficientNet-Lite0
(images upsampled to 112), MiniLM (the captions in its WordPiece ids), the
speech embedding (trained on English; here French speech):
  --config=mmfusion/configs/tuxpaint.py:pretrained=image+text,finetune=frozen
"""

import ml_collections

from mmfusion.configs import common

MODALITIES = ('image', 'text', 'audio')
TASKS = ('classification', 'retrieval')


def encoders():
  """One small encoder per modality (XLA's CPU conv gradients are slow)."""
  return {
      'image': {'name': 'cnn', 'features': 64, 'channels': (16, 32, 64)},
      'text': {'name': 'gru', 'features': 64},
      # 20 ms hops and 40 mel bands, as av_digits' words.
      'audio': {'name': 'audio_cnn', 'features': 64, 'channels': (16, 32, 32),
                'hop': 320, 'n_mels': 40},
  }


def get_config(arg: str = ''):
  """`arg`: comma-separated; a modality set joined by '+' (e.g. image+text),
  `runlocal`, or key=value pairs: `speech=LANG` (the spoken description's
  language, default fr), `caption=LOCALE` (default en; or random),
  `stamps=DIR` (default common.TUXPAINT_DIR), `task=` one of TASKS
  (retrieval: two or more modalities, the first against the rest),
  `pretrained=` modalities joined by +, `finetune=` full or frozen."""
  args = [a for a in (arg or '').split(',') if a]
  named = dict(a.split('=', 1) for a in args if '=' in a)
  bare = [a for a in args if '=' not in a and a != 'runlocal']
  modalities = tuple((bare[0] if bare else '+'.join(MODALITIES)).split('+'))
  task = named.get('task', 'classification')
  pretrained = tuple(m for m in named.get('pretrained', '').split('+') if m)
  finetune = named.get('finetune', 'full')
  if (len(bare) > 1 or set(named) - {'speech', 'caption', 'stamps', 'task',
                                     'pretrained', 'finetune'} or
      any(m not in MODALITIES for m in modalities + pretrained) or
      finetune not in common.FINETUNE or
      any(m not in MODALITIES for m in modalities) or
      len(set(modalities)) != len(modalities) or
      not all(named.values()) or task not in TASKS or
      task == 'retrieval' and len(modalities) < 2):
    raise ValueError(f'config arg {arg!r}: expected modalities from '
                     f'{MODALITIES} joined by + (two or more for '
                     f'task=retrieval), speech=LANG, caption=LOCALE, '
                     f'stamps=DIR, task= one of {TASKS}, pretrained= '
                     f'modalities joined by +, finetune= one of '
                     f'{common.FINETUNE}, or runlocal')

  config = ml_collections.ConfigDict()
  config.seed = 0
  config.batch_size = 32
  config.total_steps = 600  # ~35 epochs of the 551 train stamps
  config.eval_every = 200
  config.checkpoint_every = 200
  config.log_every = 50
  config.num_devices = 0  # 0: every visible device
  common.add_run_options(config)

  config.data = ml_collections.ConfigDict()
  config.data.name = 'tuxpaint/default'
  config.data.modalities = modalities
  config.data.data_dir = ml_collections.config_dict.placeholder(str)
  # TuxpaintConfig fields (mmfusion/data/tuxpaint.py).
  config.data.overrides = {
      'stamps_dir': named.get('stamps', common.TUXPAINT_DIR),
      'image_size': 64, 'audio_samples': 48_000, 'text_length': 64,
      'text_locale': named.get('caption', 'en'), 'audio': 'desc',
      'audio_lang': named.get('speech', 'fr')}
  # Probability of hiding each modality of a training example (present/<m>).
  config.data.modality_dropout = {}
  config.data.augment = {}  # speech augmentation (mmfusion/data/augment.py)
  # Evaluated at the end besides validation and test.
  config.data.extra_eval_splits = ()

  config.model = ml_collections.ConfigDict()
  config.model.fusion = 'concat'
  config.model.fusion_kwargs = {}
  chosen = {**encoders(), **{m: e for m, e in common.pretrained_encoders(
      finetune).items() if m in pretrained}}
  config.model.encoders = {m: e for m, e in chosen.items()
                           if m in modalities}
  config.model.early_encoder = {'name': 'mlp', 'features': 64}
  config.model.head_hidden = (64,)
  common.add_model_options(config.model)
  config.optimizer = common.adamw(grad_clip_norm=1.0)
  if task == 'retrieval':
    english = (config.data.overrides['text_locale'] == 'en' and
               'text' not in pretrained)  # zero-shot prompts are bytes
    config.task = ml_collections.ConfigDict(
        {'name': 'contrastive', 'loss_fn': 'infonce', 'width': 64,
         'towers': (modalities[:1], modalities[1:]),
         # the category names as captions: English byte-token ones
         'zero_shot': modalities[1:] == ('text',) and english,
         'prompt': '{}'})
    config.best_metric = 'recall@1'
  if 'text' in pretrained:
    config.data.overrides = {**config.data.overrides,
                             'text_tokenizer': common.TEXT_CHECKPOINT}

  if 'runlocal' in args:
    config.total_steps = 20
    config.eval_every = 10
    config.checkpoint_every = 10
    config.log_every = 5
    config.optimizer.warmup_steps = 5
    config.batch_size = 16
    config.data.overrides = {**config.data.overrides, 'image_size': 32,
                             'audio_samples': 16_000, 'text_length': 48}
  return config
