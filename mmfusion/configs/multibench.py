"""MultiBench's affective-computing sets (`multibench_affect`): sentiment of
CMU-MOSI or CMU-MOSEI, sarcasm of MUStARD, humour of UR-FUNNY, from facial
features, acoustic features and word embeddings over time.

vision, audio, text [T, F] -> one GRU each (series_gru; or tcn); mean-pooled,
concatenated, Dense(64), Dense(1): MultiBench's late-fusion baseline (GRUs,
Concat, MLP) at CPU size. Regression with L1 by default, as MultiBench trains
them (MOSI's Acc-2, F1 and Acc-7 reported too; for MUStARD and UR-FUNNY the
target is -1/1, so Acc-2 is their accuracy and Acc-7 means nothing), or
classification of the binary label.

Needs MultiBench's processed pickle, which nothing downloads (the Google
Drive folders its README links are gone): use a copy you or a colleague
hold; MulT's mosi_data.pkl and mosei_senti_data.pkl have the same layout.
By default it is looked for in ~/.cache/mmfusion/multibench under the name
MultiBench's examples use (mosi_raw.pkl, mosei_raw.pkl, sarcasm.pkl,
humor.pkl); `path=FILE` points elsewhere.

  --config=mmfusion/configs/multibench.py                  MOSI, regression
  --config=mmfusion/configs/multibench.py:dataset=mosei,path=/d/mosei.pkl
  --config=mmfusion/configs/multibench.py:dataset=mustard,task=classification
  --config=mmfusion/configs/multibench.py:vision+text      any subset
  --config=mmfusion/configs/multibench.py:encoder=tcn      TCNs, not GRUs
  --config=mmfusion/configs/multibench.py:runlocal         a seconds-long run
      (20 steps of each modality, width 16, 20 training steps)
  --config.model.fusion=low_rank_tensor                    another fusion
"""

import os

import ml_collections

from mmfusion.configs import common

MODALITIES = ('vision', 'audio', 'text')
# The pickle each dataset is looked for under (multibench.KINDS' files;
# written out so that reading a config imports no dataset code).
FILES = {'mosi': 'mosi_raw.pkl', 'mosei': 'mosei_raw.pkl',
         'mustard': 'sarcasm.pkl', 'urfunny': 'humor.pkl'}
DEFAULT_DIR = '~/.cache/mmfusion/multibench'
TASKS = ('regression', 'classification')
ENCODERS = ('series_gru', 'tcn')


def encoders(name: str, width: int) -> dict:
  """One series encoder of `width` per modality."""
  return {m: {'name': name, 'features': width} for m in MODALITIES}


def _parse(arg: str):
  """(named values, modalities, runlocal) of the config arg; ValueError
  naming what it may hold."""
  args = [a for a in (arg or '').split(',') if a]
  named = dict(a.split('=', 1) for a in args if '=' in a)
  bare = [a for a in args if '=' not in a and a != 'runlocal']
  modalities = tuple((bare[0] if bare else '+'.join(MODALITIES)).split('+'))
  if (len(bare) > 1 or set(named) - {'dataset', 'path', 'task', 'encoder'} or
      named.get('dataset', 'mosi') not in FILES or
      named.get('task', TASKS[0]) not in TASKS or
      named.get('encoder', ENCODERS[0]) not in ENCODERS or
      any(m not in MODALITIES for m in modalities) or
      len(set(modalities)) != len(modalities) or not all(named.values())):
    raise ValueError(
        f'config arg {arg!r}: expected dataset={"|".join(FILES)}, '
        f'path=FILE, task={"|".join(TASKS)}, encoder={"|".join(ENCODERS)}, '
        f'modalities from {MODALITIES} joined by +, or runlocal')
  return named, modalities, 'runlocal' in args


def get_config(arg: str = ''):
  """`arg`: comma-separated `dataset=` (default mosi), `path=`, `task=`
  (default regression), `encoder=` (default series_gru), a modality set
  joined by '+', `runlocal`."""
  named, modalities, runlocal = _parse(arg)
  dataset = named.get('dataset', 'mosi')

  config = ml_collections.ConfigDict()
  config.seed = 0
  config.batch_size = 32
  config.total_steps = 2000  # ~50 epochs of MOSI's 1,283 training clips
  config.eval_every = 200
  config.checkpoint_every = 200
  config.log_every = 50
  config.num_devices = 0  # 0: every visible device
  common.add_run_options(config)
  if named.get('task', 'regression') == 'regression':
    # MultiBench: L1 on the score; the MOSI metrics on its sign and rounding.
    config.task = ml_collections.ConfigDict(
        {'name': 'regression', 'loss_fn': 'l1', 'standardize': True,
         'sentiment': True})
    config.best_metric, config.best_mode = 'mae', 'min'

  config.data = ml_collections.ConfigDict()
  config.data.name = f'multibench_affect/{dataset}'
  config.data.modalities = modalities
  config.data.data_dir = ml_collections.config_dict.placeholder(str)
  # MultibenchConfig fields (mmfusion/data/multibench.py); 50 steps is
  # MultiBench's max_seq_len.
  config.data.overrides = {
      'path': named.get('path', os.path.join(DEFAULT_DIR, FILES[dataset])),
      'vision_steps': 50, 'audio_steps': 50, 'text_steps': 50,
      'alignment': 'auto', 'z_norm': False}
  # Probability of hiding each modality of a training example (present/<m>).
  config.data.modality_dropout = {}
  config.data.augment = {}
  # Evaluated at the end besides validation and test.
  config.data.extra_eval_splits = ()

  encoder = named.get('encoder', ENCODERS[0])
  config.model = ml_collections.ConfigDict()
  config.model.fusion = 'concat'
  config.model.fusion_kwargs = {}
  config.model.encoders = {m: e for m, e in encoders(encoder, 64).items()
                           if m in modalities}
  # `early`: the aligned steps concatenated, one encoder over them.
  config.model.early_encoder = {'name': encoder, 'features': 64}
  config.model.head_hidden = (64,)
  common.add_model_options(config.model)
  # MultiBench's AdamW: lr 1e-3, weight decay 0.01.
  config.optimizer = common.adamw(learning_rate=1e-3, grad_clip_norm=1.0)
  config.optimizer.weight_decay = 0.01

  if runlocal:
    config.total_steps = 20
    config.eval_every = 10
    config.checkpoint_every = 10
    config.log_every = 5
    config.optimizer.warmup_steps = 5
    config.batch_size = 16
    config.data.overrides = {**config.data.overrides, 'vision_steps': 20,
                             'audio_steps': 20, 'text_steps': 20}
    config.model.encoders = {m: e for m, e in encoders(encoder, 16).items()
                             if m in modalities}
    config.model.early_encoder = {'name': encoder, 'features': 16}
    config.model.head_hidden = (16,)
  return config
