"""Times mmfusion's own `train.train_step`, jitted as the training loop jits it.

The model, optimizer, members and state come from `build.run(config)`, the
one place every run is built. Compile time, FLOPs and peak memory come from
`mmfusion.cost.compiled_cost` (XLA's analyses of the same executable that is
then run: the second `jit` of the same function hits JAX's in-memory
compilation cache). A timed step is `state, metrics = step(state, batch)`
then `block_until_ready` on both.
"""

import time

import jax

from benchmarks import specs
from mmfusion import build, cost, train


class JaxRunner:
  """One model's jitted train step, its state and a batch on the device."""

  def __init__(self, spec: specs.Spec, vmap_size: int = 1):
    config = spec.config.copy_and_resolve_references()
    config.vmap.size = vmap_size  # K seeds, one batch, as train.py runs them
    config.vmap.key = 'seed'
    run = build.run(config)
    self.num_classes = run.data.num_classes
    self.batch_np = specs.make_batch(run.abstract_batch(spec.batch_size),
                                     self.num_classes, config)
    step = run.members.step(lambda s, b: train.train_step(
        s, b, model=run.model, task=run.task, tx=run.tx,
        accum_steps=config.grad_accum_steps))
    self.state = jax.jit(run.init)()
    self.batch = jax.device_put(self.batch_np)
    self.num_params = run.num_params(self.state.params)
    self.kernels = run.model.kernels.name
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
    parts = [c.get(f'{k}_bytes')
             for k in ('argument', 'output', 'temp', 'alias')]
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
