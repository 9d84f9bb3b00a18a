"""The seed model on `synthetic_interactions`.

image features (100-d) -> Dense(64) + ReLU; text features (50-d) -> Dense(64)
+ ReLU; concatenate; Dense(10).

  --config=mmfusion/configs/seed.py               redundancy (default)
  --config=mmfusion/configs/seed.py:synergy       another mechanism
  --config=mmfusion/configs/seed.py:synergy,runlocal   a seconds-long run
  --config=mmfusion/configs/seed.py:redundancy_3mod    names ending in _3mod
      add tabular features (20-d) -> Dense(64) + ReLU as a third modality
  --config=mmfusion/configs/seed.py:regression_synergy  names starting with
      regression_ : the regression task on a continuous target (MAE kept)
  --config=mmfusion/configs/seed.py:redundancy,task=contrastive  image vs
      text towers (add loss=siglip for SigLIP's loss); recall@1 kept
  --config.model.fusion=tensor                       another fusion method
"""

import ml_collections

from mmfusion.configs import common


def get_config(arg: str = ''):
  """`arg`: comma-separated; a synthetic_interactions config name, `runlocal`,
  `task=contrastive` (and `loss=siglip`)."""
  args = [a for a in (arg or '').split(',') if a]
  named = dict(a.split('=', 1) for a in args if '=' in a)
  if set(named) - {'task', 'loss'} or named.get('task', 'contrastive') != (
      'contrastive'):
    raise ValueError(f'config arg {arg!r}: expected a synthetic_interactions '
                     f'config name, runlocal, task=contrastive, loss=siglip')
  variant = next((a for a in args if a != 'runlocal' and '=' not in a),
                 'redundancy')
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.batch_size = 128
  config.total_steps = 1500
  config.eval_every = 500
  config.checkpoint_every = 500
  config.log_every = 100
  config.num_devices = 0  # 0: every visible device
  common.add_run_options(config)
  if variant.startswith('regression_'):
    config.task = ml_collections.ConfigDict(
        {'name': 'regression', 'loss_fn': 'l1', 'standardize': True,
         'sentiment': False})
    config.best_metric, config.best_mode = 'mae', 'min'

  config.data = ml_collections.ConfigDict()
  config.data.name = f'synthetic_interactions/{variant}'
  config.data.modalities = ('image', 'text')
  config.data.data_dir = ml_collections.config_dict.placeholder(str)
  config.data.overrides = {}  # builder-config fields, e.g. {'noise': 2.0}
  # Probability of hiding each modality of a training example (present/<m>).
  config.data.modality_dropout = {}
  config.data.augment = {}  # speech augmentation (mmfusion/data/augment.py)
  # Evaluated at the end besides validation and test.
  config.data.extra_eval_splits = ()

  config.model = ml_collections.ConfigDict()
  config.model.fusion = 'concat'
  config.model.fusion_kwargs = {}
  config.model.encoders = {
      'image': {'name': 'mlp', 'features': 64},
      'text': {'name': 'mlp', 'features': 64},
  }
  if variant.endswith('_3mod'):
    config.data.modalities += ('tabular',)
    config.model.encoders['tabular'] = {'name': 'mlp', 'features': 64}
  config.model.early_encoder = {'name': 'mlp', 'features': 64}
  config.model.head_hidden = ()
  if named.get('task') == 'contrastive':
    config.task = ml_collections.ConfigDict(
        {'name': 'contrastive', 'loss_fn': named.get('loss', 'infonce'),
         'width': 64, 'towers': (('image',), tuple(
             m for m in config.data.modalities if m != 'image'))})
    config.best_metric = 'recall@1'
  common.add_model_options(config.model)
  config.optimizer = common.adamw()

  if 'runlocal' in args:
    config.total_steps = 60
    config.eval_every = 30
    config.checkpoint_every = 30
    config.log_every = 10
    config.optimizer.warmup_steps = 10
    config.data.overrides = {'num_train': 512, 'num_validation': 128,
                             'num_test': 128}
  return config
