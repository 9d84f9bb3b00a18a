r"""The contrastive train step over a mesh, and what its global batch costs.

  python -m benchmarks.contrastive_step [--devices=8] [--batch_size=256] \
      [--run_config=av_digits:video,task=contrastive] [--loss_fn=infonce]

Times one jitted `train.train_step` of the contrastive task at a global batch
of `--batch_size` over `--devices` fake CPU devices (the XLA flag is set
before JAX starts), then the part of it that the global batch adds: the
all-gather of both towers' embeddings over the data axis and the B x B
similarities, loss and gradient, jitted alone on embeddings of the step's
shape and sharding. Prints a Markdown table (median of --steps, after one
warm-up call each) for benchmarks/RESULTS.md.
"""

import os
import sys
import time

from absl import app, flags

_DEVICES = flags.DEFINE_integer('devices', 8, 'Fake CPU devices.')
_BATCH = flags.DEFINE_integer('batch_size', 256, 'Global batch.')
_CONFIG = flags.DEFINE_string(
    'run_config', 'av_digits:video,task=contrastive',
    'A packaged config NAME:ARG with a contrastive task.')
_LOSS = flags.DEFINE_enum('loss_fn', 'infonce', ['infonce', 'siglip'],
                          'The contrastive loss.')
_STEPS = flags.DEFINE_integer('steps', 10, 'Timed calls of each function.')


def _median_seconds(fn, *args, steps: int) -> float:
  import jax  # pylint: disable=g-import-not-at-top
  jax.block_until_ready(fn(*args))  # compile and warm up
  times = []
  for _ in range(steps):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t0)
  return sorted(times)[len(times) // 2]


def measure(run_config: str, batch_size: int, loss_fn: str,
            steps: int) -> dict:
  """{'step_ms', 'global_ms', 'share', ...} of one contrastive config."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import mmfusion  # pylint: disable=g-import-not-at-top
  from mmfusion import build, sharding, train  # pylint: disable=g-import-not-at-top

  name, _, arg = run_config.partition(':')
  config = mmfusion.get_config(name, arg)
  config.batch_size = batch_size
  config.task.loss_fn = loss_fn
  run = build.run(config)
  task, mesh = run.task, run.mesh
  batch = {k: np.zeros(shape, dtype) for k, (shape, dtype) in
           run.batch_spec(batch_size).items()}
  batch = sharding.to_global(batch, mesh)
  state = run.init_state()
  step = jax.jit(lambda s, b: train.train_step(
      s, b, model=run.model, task=task, tx=run.tx), donate_argnums=0)

  def donated(s, b):  # a fresh state each call: the step donates it
    return step(jax.tree.map(jnp.copy, s), b)

  step_s = _median_seconds(donated, state, batch, steps=steps)
  copy_s = _median_seconds(jax.jit(lambda s: jax.tree.map(jnp.copy, s)),
                           state, steps=steps)

  # The global-batch part alone: gather + B x B similarities + loss + grad.
  rows = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec('data'))
  rng = np.random.default_rng(0)
  unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)
  d = task.width
  emb = {side: jax.device_put(unit(rng.normal(size=(batch_size, d))).astype(
      np.float32), rows) for side in ('a', 'b')}
  ones = jax.device_put(np.ones(batch_size, bool), rows)

  def global_part(a, b):
    out = {'a': a, 'b': b, 'present_a': ones, 'present_b': ones,
           'log_scale': jnp.float32(2.0), 'bias': jnp.float32(-1.0)}
    return task.loss(out, {})[0]

  grad = jax.jit(jax.value_and_grad(global_part, argnums=(0, 1)))
  global_s = _median_seconds(grad, emb['a'], emb['b'], steps=steps)
  step_ms = (step_s - copy_s) * 1e3
  return {'config': run_config, 'loss_fn': loss_fn, 'devices': mesh.size,
          'batch_size': batch_size, 'width': d, 'step_ms': step_ms,
          'global_ms': global_s * 1e3, 'share': global_s * 1e3 / step_ms}


def table(rows) -> str:
  lines = ['| config | loss | devices | global batch | width | step ms | '
           'gather + BxB + loss + grad ms | share of step |',
           '|---|---|---|---|---|---|---|---|']
  for r in rows:
    lines.append(
        f'| {r["config"]} | {r["loss_fn"]} | {r["devices"]} | '
        f'{r["batch_size"]} | {r["width"]} | {r["step_ms"]:.1f} | '
        f'{r["global_ms"]:.2f} | {100 * r["share"]:.1f}% |')
  return '\n'.join(lines)


def main(argv):
  del argv
  print(table([measure(_CONFIG.value, _BATCH.value, _LOSS.value,
                       _STEPS.value)]))


if __name__ == '__main__':
  # Fake devices before JAX starts: parse --devices by hand first.
  count = next((a.split('=', 1)[1] for a in sys.argv
                if a.startswith('--devices=')), '8')
  os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                             f' --xla_force_host_platform_device_count={count}')
  os.environ.setdefault('JAX_PLATFORMS', 'cpu')
  app.run(main)
