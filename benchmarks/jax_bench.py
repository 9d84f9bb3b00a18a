"""Times mmfusion's own `train.train_step`, jitted as the training loop jits it.

Compile time, FLOPs and peak memory come from `mmfusion.cost.compiled_cost`
(XLA's analyses of the same executable that is then run: the second `jit` of
the same function hits JAX's in-memory compilation cache). A timed step is
`state, metrics = step(state, batch)` then `block_until_ready` on both.
"""

import time

import jax
import numpy as np

from benchmarks import specs
from mmfusion import cost, models, train


class JaxRunner:
  """One model's jitted train step, its state and a batch on the device."""

  def __init__(self, spec: specs.Spec, vmap_size: int = 1):
    config = spec.config
    abstract, num_classes = specs.input_spec(config, spec.batch_size)
    self.batch_np = specs.make_batch(abstract, num_classes, config)
    self.num_classes = num_classes
    model = models.from_config(config.model, num_classes)
    tx = train.make_optimizer(config)
    example = {k: v[:1] for k, v in self.batch_np.items()}
    step = lambda s, b: train.train_step(s, b, model=model, tx=tx)
    if vmap_size > 1:  # as train.py runs config.vmap: K seeds, one batch
      seeds = np.arange(config.seed, config.seed + vmap_size)
      init = lambda: train.init_members(model, tx, example, seeds,
                                        np.ones(vmap_size, np.float32))
      step = jax.vmap(step, in_axes=(0, None))
    else:
      init = lambda: train.create_train_state(model, tx, example, config.seed)
    self.state = jax.jit(init)()
    self.batch = jax.device_put(self.batch_np)
    self.num_params = sum(int(x.size) for x in jax.tree.leaves(
        self.state.params)) // vmap_size
    self.cost = cost.compiled_cost(step, self.state, self.batch, donate=0)
    self._step = jax.jit(step, donate_argnums=0)
    self.metrics = None

  @property
  def peak_bytes(self):
    """Arguments + outputs + temporaries - donated (aliased) bytes.

    XLA:CPU's `peak_memory_in_bytes` leaves out most temporaries (4.5 MB for
    a step whose temp buffer is 187 MB), so the sum of the parts is used.
    """
    c = self.cost
    parts = [c.get(f'{k}_bytes') for k in ('argument', 'output', 'temp', 'alias')]
    if None in parts:
      return c['peak_bytes']
    arg, out, temp, alias = parts
    return max(c['peak_bytes'] or 0, arg + out + temp - alias)

  def run(self, n: int) -> list[float]:
    """Seconds of each of `n` steps, each waited for."""
    times = []
    for _ in range(n):
      t0 = time.perf_counter()
      self.state, self.metrics = self._step(self.state, self.batch)
      jax.block_until_ready((self.state, self.metrics))
      times.append(time.perf_counter() - t0)
    return times
