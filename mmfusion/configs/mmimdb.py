"""MM-IMDb (`mmimdb`): a movie's genres (any of 23) from its poster and plot.

poster 64x64 -> 3-stage CNN; plot bytes (256) -> GRU; mean-pooled tokens,
concatenated, Dense(23) logits under the multilabel task (sigmoid
cross-entropy; mAP kept). Sized for a 2-core CPU. Arevalo et al. (2017,
"Gated Multimodal Units for Information Fusion") built the dataset and
report F-scores (micro, macro, weighted, samples) on its test split.

Where the files come from: the authors crawled 25,959 movies from IMDb and
distribute them at http://lisi1.unal.edu.co/mmimdb/ and on archive.org
(links in https://github.com/johnarevalo/gmu-mmimdb). Licence: their
repository is under the MIT licence and states no other terms for the data;
the posters and plots themselves are IMDb's. Nothing downloads at run time:

  mkdir -p ~/.cache/mmfusion/mmimdb && cd ~/.cache/mmfusion/mmimdb
  curl -LO https://archive.org/download/mmimdb/mmimdb.tar.gz
  tar xzf mmimdb.tar.gz       # mmimdb/split.json + mmimdb/dataset/

or multimodal_imdb.hdf5 and metadata.npy side by side (path=FILE.hdf5);
see mmfusion/data/mmimdb.py for both layouts.

  --config=mmfusion/configs/mmimdb.py                  poster + plot
  --config=mmfusion/configs/mmimdb.py:image            one modality alone
  --config=mmfusion/configs/mmimdb.py:text
  --config=mmfusion/configs/mmimdb.py:path=DIR         another copy (a folder
      holding split.json or mmimdb/, or the .hdf5 file)
  --config=mmfusion/configs/mmimdb.py:balanced         weight each genre's
      positives by its rarity (Drama is on 54% of movies, Film-Noir 1%)
  --config=mmfusion/configs/mmimdb.py:runlocal         a seconds-long run
      (32x32 posters, 64 bytes of plot, 20 steps)
  --config.model.fusion=gated                          another fusion
"""

import ml_collections

from mmfusion.configs import common

MODALITIES = ('image', 'text')
# Where mmimdb.tar.gz is unpacked (mmimdb.DEFAULT_DIR; written out so that
# reading a config imports no dataset code).
MMIMDB_DIR = '~/.cache/mmfusion/mmimdb'


def encoders():
  """One small encoder per modality (XLA's CPU conv gradients are slow)."""
  return {
      'image': {'name': 'cnn', 'features': 64, 'channels': (16, 32, 64)},
      'text': {'name': 'gru', 'features': 64},
  }


def get_config(arg: str = ''):
  """`arg`: comma-separated; a modality set joined by '+' (e.g. image+text),
  `runlocal`, `balanced`, or `path=PATH` (default MMIMDB_DIR)."""
  args = [a for a in (arg or '').split(',') if a]
  named = dict(a.split('=', 1) for a in args if '=' in a)
  bare = [a for a in args if '=' not in a and a not in ('runlocal',
                                                        'balanced')]
  modalities = tuple((bare[0] if bare else '+'.join(MODALITIES)).split('+'))
  if (len(bare) > 1 or set(named) - {'path'} or
      any(m not in MODALITIES for m in modalities) or
      len(set(modalities)) != len(modalities) or not all(named.values())):
    raise ValueError(f'config arg {arg!r}: expected modalities from '
                     f'{MODALITIES} joined by +, path=PATH, balanced or '
                     f'runlocal')

  config = ml_collections.ConfigDict()
  config.seed = 0
  config.batch_size = 64
  config.total_steps = 5_000  # ~20 epochs of the 15,552 train movies
  config.eval_every = 500
  config.checkpoint_every = 500
  config.log_every = 100
  config.num_devices = 0  # 0: every visible device
  common.add_run_options(config)
  config.task = ml_collections.ConfigDict(
      {'name': 'multilabel', 'class_balanced': 'balanced' in args})
  config.best_metric = 'map'

  config.data = ml_collections.ConfigDict()
  config.data.name = 'mmimdb/default'
  config.data.modalities = modalities
  config.data.data_dir = ml_collections.config_dict.placeholder(str)
  # MmImdbConfig fields (mmfusion/data/mmimdb.py).
  config.data.overrides = {
      'path': named.get('path', MMIMDB_DIR), 'image_size': 64,
      'image_fit': 'pad', 'text_length': 256}
  # Probability of hiding each modality of a training example (present/<m>).
  config.data.modality_dropout = {}
  config.data.augment = {}
  config.data.extra_eval_splits = ()

  config.model = ml_collections.ConfigDict()
  config.model.fusion = 'concat'
  config.model.fusion_kwargs = {}
  config.model.encoders = {m: e for m, e in encoders().items()
                           if m in modalities}
  config.model.early_encoder = {'name': 'mlp', 'features': 64}
  config.model.head_hidden = (64,)
  common.add_model_options(config.model)
  config.optimizer = common.adamw(grad_clip_norm=1.0)

  if 'runlocal' in args:
    config.total_steps = 20
    config.eval_every = 10
    config.checkpoint_every = 10
    config.log_every = 5
    config.optimizer.warmup_steps = 5
    config.batch_size = 16
    config.data.overrides = {**config.data.overrides, 'image_size': 32,
                             'text_length': 64}
  return config
