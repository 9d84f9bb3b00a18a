"""Tiny configs shared by the end-to-end tests."""

import json
import os

from mmfusion.configs import seed as seed_config

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


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_CONFIG = 'mmfusion/configs/seed.py:uniqueness_image,runlocal'
TINY_FLAGS = (
    '--config.batch_size=16', '--config.log_every=1',
    '--config.optimizer.warmup_steps=2', '--compilation_cache=',
    f'--config.data.overrides={TINY_DATA!r}')


def main_command(workdir: str, data_dir: str, *flags, config=TINY_CONFIG):
  """argv of `python -m mmfusion.main` on the tiny config (`config`: the
  --config it shrinks)."""
  import sys
  return [sys.executable, '-m', 'mmfusion.main', f'--workdir={workdir}',
          f'--config={config}', *TINY_FLAGS,
          f'--config.data.data_dir={data_dir}', *flags]


def subprocess_env(devices: int = 1):
  """Environment of a child run with `devices` fake CPU devices."""
  return {**os.environ, 'JAX_PLATFORMS': 'cpu', 'PYTHONUNBUFFERED': '1',
          'XLA_FLAGS': f'--xla_force_host_platform_device_count={devices} '
                       '--xla_backend_optimization_level=0 '
                       '--xla_cpu_use_fusion_emitters=false'}


def final_params(workdir: str, step: int | None = None):
  """Parameters of a run's checkpoint (latest by default) as numpy arrays."""
  import jax
  import numpy as np
  import orbax.checkpoint as ocp
  path = os.path.join(workdir, 'checkpoints')
  with ocp.CheckpointManager(path) as manager:
    step = manager.latest_step() if step is None else step
  # Read as host numpy arrays, whatever devices wrote them.
  with ocp.PyTreeCheckpointer() as reader:
    meta = reader.metadata(os.path.join(path, str(step), 'state')).item_metadata
    as_numpy = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray),
                            meta.tree)
    state = reader.restore(os.path.join(path, str(step), 'state'),
                           args=ocp.args.PyTreeRestore(restore_args=as_numpy))
  return state['params']
