"""Action or sound-event classification from video clips and their sound
(`video_folder`: Kinetics, VGGSound, or a folder with a path,label CSV).

16 frames of 64x64 -> per-frame CNN + a 1-layer Transformer over time; the
clip's 10 s sound track -> log-mel CNN; cross-attention between the two
token streams, mean-pooled, Dense(classes). Sized for a small machine: raise
`frames`, `size` and the encoders for real runs.

  --config=mmfusion/configs/video_folder.py:folder=/data/k400/clips,csv=/data/k400/train.csv+/data/k400/validate.csv
  --config=mmfusion/configs/video_folder.py:video,csv=/data/clips/labels.csv
      frames alone (the CSV's folder holds the clips)
  ...,frames=8,size=32,seconds=2     fewer frames, smaller, 2 s of sound
  ...,runlocal                       a seconds-long check
The CSV layouts, clip names and splits: mmfusion/data/video_folder.py.
"""

import ml_collections

from mmfusion.configs import common

MODALITIES = ('video', 'audio')
NAMED = ('folder', 'csv', 'frames', 'size', 'seconds')


def encoders():
  return {
      'video': {'name': 'video_transformer', 'features': 64, 'num_layers': 1,
                'frame_encoder': 'cnn',
                'frame_options': {'channels': (16, 32, 64), 'pool': True}},
      'audio': {'name': 'audio_cnn', 'features': 64, 'channels': (16, 32, 32),
                'hop': 320, 'n_mels': 40},
  }


def get_config(arg: str = ''):
  """`arg`: comma-separated; a modality set (video, audio, video+audio),
  `runlocal`, or key=value pairs `folder=DIR`, `csv=FILE[+FILE...]`,
  `frames=T`, `size=S` (S x S frames), `seconds=N` (of sound)."""
  args = [a for a in (arg or '').split(',') if a]
  named = dict(a.split('=', 1) for a in args if '=' in a)
  bare = [a for a in args if '=' not in a and a != 'runlocal']
  modalities = tuple((bare[0] if bare else '+'.join(MODALITIES)).split('+'))
  numbers = ('frames', 'size', 'seconds')
  if (len(bare) > 1 or set(named) - set(NAMED) or not all(named.values()) or
      any(m not in MODALITIES for m in modalities) or
      len(set(modalities)) != len(modalities) or
      any(k in named and not named[k].isdigit() for k in numbers)):
    raise ValueError(f'config arg {arg!r}: expected modalities from '
                     f'{MODALITIES} joined by +, runlocal, folder=DIR, '
                     f'csv=FILE[+FILE], frames=T, size=S or seconds=N '
                     f'(whole numbers)')
  runlocal = 'runlocal' in args
  frames = int(named.get('frames', 4 if runlocal else 16))
  size = int(named.get('size', 32 if runlocal else 64))
  seconds = int(named.get('seconds', 2 if runlocal else 10))

  config = ml_collections.ConfigDict()
  config.seed = 0
  config.batch_size = 8 if runlocal else 32
  config.total_steps = 20 if runlocal else 20_000
  config.eval_every = 10 if runlocal else 2000
  config.checkpoint_every = config.eval_every
  config.log_every = 5 if runlocal else 100
  config.num_devices = 0  # 0: every visible device
  common.add_run_options(config)

  config.data = ml_collections.ConfigDict()
  config.data.name = 'video_folder/default'
  config.data.modalities = modalities
  config.data.data_dir = ml_collections.config_dict.placeholder(str)
  # VideoFolderConfig fields (mmfusion/data/video_folder.py).
  config.data.overrides = {
      'folder': named.get('folder', ''),
      'csv': tuple(p for p in named.get('csv', '').split('+') if p),
      'frames': frames, 'size': (size, size),
      'with_audio': 'audio' in modalities,
      'audio_samples': seconds * 16_000}
  config.data.modality_dropout = {}
  config.data.augment = {}
  config.data.extra_eval_splits = ()

  config.model = ml_collections.ConfigDict()
  config.model.fusion = 'cross_attention' if len(modalities) > 1 else 'concat'
  config.model.fusion_kwargs = {}
  config.model.encoders = {m: e for m, e in encoders().items()
                           if m in modalities}
  config.model.early_encoder = {'name': 'mlp', 'features': 64}
  config.model.head_hidden = (64,)
  common.add_model_options(config.model)
  config.optimizer = common.adamw(grad_clip_norm=1.0)
  if runlocal:
    config.optimizer.warmup_steps = 5
  return config
