"""Wall-clock time of one training step of a config, for the cost table."""

import time

import jax
import numpy as np

from mmfusion import models, train
from mmfusion.data import pipeline


def train_step_seconds(config, steps: int = 20) -> float:
  """Median seconds of `train.train_step` on one global batch of zeros.

  The step is compiled and run once before timing; the batch stays on the
  device, so this is the model's compute, not the input pipeline's.
  """
  builder = pipeline.get_builder(config.data)
  num_classes = builder.info.features['label'].num_classes
  spec = pipeline.batch_spec(builder, config.data.modalities, config.batch_size)
  batch = jax.device_put({k: np.zeros(shape, dtype)
                          for k, (shape, dtype) in spec.items()})
  model = models.from_config(config.model, num_classes)
  tx = train.make_optimizer(config)
  state = jax.jit(lambda b: train.create_train_state(
      model, tx, b, config.seed))(batch)
  step = jax.jit(lambda s, b: train.train_step(s, b, model=model, tx=tx),
                 donate_argnums=0)
  state, _ = step(state, batch)
  jax.block_until_ready(state)
  times = []
  for _ in range(max(steps, 1)):
    t0 = time.perf_counter()
    state, _ = step(state, batch)
    jax.block_until_ready(state)
    times.append(time.perf_counter() - t0)
  return float(np.median(times))
