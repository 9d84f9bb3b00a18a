"""Wall-clock time of one training step of a config, for the cost table."""

import time

import jax
import numpy as np

from mmfusion import build, train


def train_step_seconds(config, steps: int = 20) -> float:
  """Median seconds of `train.train_step` on one global batch of zeros, for
  one member (a vmapped config's members are timed as one run).

  The step is compiled and run once before timing; the batch stays on the
  device, so this is the model's compute, not the input pipeline's.
  """
  run = build.run(config)
  batch = jax.device_put({k: np.zeros(shape, dtype) for k, (shape, dtype) in
                          run.batch_spec(config.batch_size).items()})
  state = jax.jit(lambda b: build.create_train_state(
      run.model, run.tx, b, config.seed))(batch)
  step = jax.jit(lambda s, b: train.train_step(
      s, b, model=run.model, task=run.task, tx=run.tx), donate_argnums=0)
  state, _ = step(state, batch)
  jax.block_until_ready(state)
  times = []
  for _ in range(max(steps, 1)):
    t0 = time.perf_counter()
    state, _ = step(state, batch)
    jax.block_until_ready(state)
    times.append(time.perf_counter() - t0)
  return float(np.median(times))
