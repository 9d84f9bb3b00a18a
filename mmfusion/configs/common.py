"""Run options every config shares: sharding, accumulation, vmap, best."""

import ml_collections


def add_run_options(config: ml_collections.ConfigDict):
  """Sets the scale and reliability keys (README, "Scale and reliability")."""
  config.fsdp = False  # shard params + optimizer state over `data`
  config.fsdp_min_size = 2**14  # arrays smaller than this stay replicated
  config.grad_accum_steps = 1  # micro-batches per step (same global batch)
  config.keep_checkpoints = 3
  config.best_metric = 'accuracy'  # validation metric of the kept best/
  config.best_mode = 'max'
  # K runs in one compiled program (jax.vmap over the train state): seeds
  # seed..seed+K-1, or K peak learning rates (key='optimizer.learning_rate').
  config.vmap = ml_collections.ConfigDict(
      {'size': 1, 'key': 'seed', 'values': ()})
  return config
