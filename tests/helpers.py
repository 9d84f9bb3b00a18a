"""Tiny configs shared by the end-to-end tests."""

import json
import os

from experiments.configs import seed as seed_config

TINY_DATA = {'num_train': 256, 'num_validation': 64, 'num_test': 64}


def tiny_config(data_dir: str, variant: str = 'uniqueness_image', **overrides):
  """The seed config shrunk to seconds: 16-example batches, a few steps."""
  config = seed_config.get_config(variant)
  config.data.data_dir = data_dir
  config.data.overrides = dict(TINY_DATA)
  config.batch_size = 16
  config.total_steps = 12
  config.eval_every = 6
  config.checkpoint_every = 4
  config.log_every = 1
  config.optimizer.warmup_steps = 2
  config.update_from_flattened_dict(overrides)
  return config


def read_metrics(workdir: str, split: str = 'train'):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [r for r in map(json.loads, f) if r['split'] == split]
