"""Image + speech + text digits (`av_digits`), fused or one modality at a time.

image 28x28 -> 3-stage CNN; audio 0.75 s -> log-mel CNN; text bytes -> GRU;
mean-pooled tokens, concatenated, Dense(10). Sized for a 2-core CPU.

  --config=mmfusion/configs/av_digits.py               noisy, all three
  --config=mmfusion/configs/av_digits.py:audio         one modality alone
  --config=mmfusion/configs/av_digits.py:image+text    any subset
  --config=mmfusion/configs/av_digits.py:clean         every modality clean
  --config=mmfusion/configs/av_digits.py:video         audio-visual sync
  --config=mmfusion/configs/av_digits.py:variant=video,modalities=video
  --config=mmfusion/configs/av_digits.py:audio,runlocal   a seconds-long run
  --config=mmfusion/configs/av_digits.py:audio,speech_shift
      evaluate on human speech too (test_speech_shift, from Tux Paint's
      stamps in ~/.cache/mmfusion/tuxpaint: `make tuxpaint`; or
      speech_shift=DIR for another copy)
  --config=mmfusion/configs/av_digits.py:audio,augment
      train with SPEECH_AUGMENT (speed, pitch, reverb, telephone band,
      coloured noise, SpecAugment masks; mmfusion/data/augment.py)
  --config.model.fusion=gated                              another fusion

Tasks (`task=NAME`, default classification of `label`):
  --config=mmfusion/configs/av_digits.py:video,task=multilabel
      which digits occur in the clip (`labels`); mAP kept
  --config=mmfusion/configs/av_digits.py:video,task=contrastive
      find a clip's own sound track among the others': towers (video,) and
      (audio,) (the first modality against the rest), InfoNCE; add
      loss=siglip for SigLIP's loss. Recall@1 kept.
  --config=mmfusion/configs/av_digits.py:clean,modalities=image+text,task=contrastive
      handwriting vs written words, with zero-shot digit classification by
      the nearest English digit word

Pretrained encoders (`pretrained=` modalities joined by +, `finetune=full`
or `frozen`, default full at a tenth of the learning rate):
  --config=mmfusion/configs/av_digits.py:audio,pretrained=audio,finetune=frozen
      Google's speech embedding (openWakeWord's ONNX weights), frozen
  --config=mmfusion/configs/av_digits.py:pretrained=image+audio+text
      EfficientNet-Lite0 (ImageNet) on 112x112 upsampled digits and
      all-MiniLM-L6-v2 on the words (built with its WordPiece ids) as well
"""

import ml_collections

from mmfusion.configs import common

VARIANTS = ('clean', 'noisy', 'video')
MODALITIES = ('image', 'audio', 'text', 'video')
TASKS = ('classification', 'multilabel', 'contrastive')
FINETUNE = common.FINETUNE
TEXT_CHECKPOINT = common.TEXT_CHECKPOINT
pretrained_encoders = common.pretrained_encoders
# Each kind touches this share of the training examples (data.augment.audio).
SPEECH_AUGMENT = {'speed': 0.5, 'pitch': 0.3, 'reverb': 0.3, 'band_limit': 0.3,
                  'noise': 0.3, 'spec_mask': 0.5}


def encoders():
  """One small encoder per modality (XLA's CPU conv gradients are slow)."""
  return {
      'image': {'name': 'cnn', 'features': 64, 'channels': (16, 32, 64)},
      # 20 ms hops and 40 mel bands: half the frames of the default, enough
      # for single words, and the audio CNN is the slowest encoder here.
      'audio': {'name': 'audio_cnn', 'features': 64, 'channels': (16, 32, 32),
                'hop': 320, 'n_mels': 40},
      'text': {'name': 'gru', 'features': 64},
      # One token per frame: synchrony needs to know when a digit is seen.
      'video': {'name': 'video_transformer', 'features': 64, 'num_layers': 1,
                'frame_encoder': 'cnn',
                'frame_options': {'channels': (16, 32), 'pool': True}},
  }


def get_config(arg: str = ''):
  """`arg`: comma-separated; a variant (clean, noisy, video), a modality set
  joined by '+' (e.g. image+audio), `runlocal`; or as key=value pairs
  `variant=video,modalities=video` (needed where the two look alike)."""
  args = [a for a in (arg or '').split(',') if a]
  named = dict(a.split('=', 1) for a in args if '=' in a)
  if 'speech_shift' in args:
    named['speech_shift'] = common.TUXPAINT_DIR
  flags = ('runlocal', 'speech_shift', 'augment')
  bare = [a for a in args if '=' not in a and a not in flags]
  variant = named.get('variant') or next(
      (a for a in bare if a in VARIANTS), 'noisy')
  chosen = named.get('modalities') or next(
      (a for a in bare if a not in VARIANTS), None)
  default = 'video+audio' if variant == 'video' else 'image+audio+text'
  modalities = tuple((chosen or default).split('+'))
  task = named.get('task', 'classification')
  loss = named.get('loss', 'infonce')
  pretrained = tuple(m for m in named.get('pretrained', '').split('+') if m)
  finetune = named.get('finetune', 'full')
  if (variant not in VARIANTS or
      set(named) - {'variant', 'modalities', 'task', 'loss', 'pretrained',
                    'finetune', 'speech_shift'} or
      ('speech_shift' in named and variant == 'video') or
      ('augment' in args and 'audio' not in modalities) or
      any(m not in MODALITIES for m in modalities) or task not in TASKS or
      any(m not in pretrained_encoders(finetune) for m in pretrained) or
      finetune not in FINETUNE):
    raise ValueError(f'config arg {arg!r}: expected a variant in {VARIANTS}, '
                     f'modalities from {MODALITIES} joined by +, task= one '
                     f'of {TASKS}, pretrained= from '
                     f'{tuple(pretrained_encoders(finetune))} joined by +, '
                     f'finetune= one of {FINETUNE}, speech_shift[=DIR] '
                     f'(not with video), augment (with audio), or runlocal')

  config = ml_collections.ConfigDict()
  config.seed = 0
  config.batch_size = 64
  config.total_steps = 1000
  config.eval_every = 500
  config.checkpoint_every = 500
  config.log_every = 100
  config.num_devices = 0  # 0: every visible device
  common.add_run_options(config)

  config.data = ml_collections.ConfigDict()
  config.data.name = f'av_digits/{variant}'
  config.data.modalities = modalities
  config.data.data_dir = ml_collections.config_dict.placeholder(str)
  config.data.overrides = {}  # AvDigitsConfig fields, e.g. {'num_train': 800}
  # Probability of hiding each modality of a training example (present/<m>).
  config.data.modality_dropout = {}
  # Training-time speech augmentation by modality (mmfusion/data/augment.py),
  # e.g. {'audio': {'reverb': 0.5, 'band_limit': 0.5}}.
  config.data.augment = {}
  # Evaluated at the end besides validation and test.
  config.data.extra_eval_splits = ('test_shift',) if variant != 'video' else ()

  config.model = ml_collections.ConfigDict()
  # Synchrony needs the two streams' timing, which pooled concat throws away.
  config.model.fusion = ('cross_attention' if variant == 'video' and
                         len(modalities) > 1 else 'concat')
  if task == 'multilabel':
    config.task = ml_collections.ConfigDict(
        {'name': 'multilabel', 'class_balanced': False})
    config.best_metric = 'map'
  elif task == 'contrastive':
    config.task = ml_collections.ConfigDict(
        {'name': 'contrastive', 'loss_fn': loss, 'width': 64,
         'towers': (modalities[:1], modalities[1:]),
         # image vs the digit's written word: classify by the class words
         'zero_shot': modalities[1:] == ('text',), 'prompt': '{}'})
    config.best_metric = 'recall@1'
    config.model.fusion = 'concat'  # within a tower; one modality: pooled
  config.model.fusion_kwargs = {}
  chosen_encoders = {**encoders(), **{
      m: e for m, e in pretrained_encoders(finetune).items() if m in pretrained}}
  config.model.encoders = {m: e for m, e in chosen_encoders.items()
                           if m in modalities}
  config.model.early_encoder = {'name': 'mlp', 'features': 64}
  config.model.head_hidden = (64,)
  common.add_model_options(config.model)
  config.optimizer = common.adamw(grad_clip_norm=1.0)

  if variant == 'video':  # 2 s of audio and 8 frames: slower per example
    config.batch_size = 32
    config.total_steps = 800
    config.eval_every = config.checkpoint_every = 400

  if 'runlocal' in args:
    config.total_steps = 40
    config.eval_every = 20
    config.checkpoint_every = 20
    config.log_every = 10
    config.optimizer.warmup_steps = 10
    config.batch_size = 32
    config.data.overrides = {
        'num_train': 256, 'num_validation': 64, 'num_test': 64,
        'num_test_shift': 0 if variant == 'video' else 64,
        'train_speakers': 20, 'eval_speakers': 10}
  if 'augment' in args:
    config.data.augment = {'audio': dict(SPEECH_AUGMENT)}
  if 'speech_shift' in named:
    config.data.overrides = {**config.data.overrides,
                             'speech_shift_dir': named['speech_shift']}
    config.data.extra_eval_splits += ('test_speech_shift',)
    if 'runlocal' in args:
      config.data.overrides['num_test_speech_shift'] = 64
  if 'text' in pretrained:
    config.data.overrides = {**config.data.overrides,
                             'text_tokenizer': TEXT_CHECKPOINT}
  return config
