r"""Where one compiled train step spends its time, per XLA op kind.

  python -m benchmarks.op_profile [--model=av] [--traced_steps=10] [--top=20]

Runs the model's jitted train step (the one `benchmarks.run` times) under
`jax.profiler.trace` and sums the trace's op events on XLA's intra-op pool
threads: wall time per step, op time per step over all threads, op events per
step, the thunk executor's own time, and op time per kind (the HLO name
without its number: `ynn_fusion`, `dot`, `transpose_copy_fusion`, ...).
"""

import collections
import glob
import os
import tempfile

from absl import app, flags

from mmfusion.runtime import cli

_MODEL = flags.DEFINE_string('model', 'av', 'benchmarks/specs.py MODELS name.')
_STEPS = flags.DEFINE_integer('traced_steps', 10,
                              'Traced steps (after 5 untimed).')
_TOP = flags.DEFINE_integer('top', 20, 'Op kinds to list.')

POOL_THREAD = 'tf_XLAEigen'  # XLA:CPU's intra-op pool


def op_times(xplane_path: str) -> tuple[dict, dict, float]:
  """(ns per event name, events per name, executor ns) on the pool threads."""
  from jax.profiler import ProfileData  # pylint: disable=g-import-not-at-top
  total, count, executor = collections.Counter(), collections.Counter(), 0
  for plane in ProfileData.from_file(xplane_path).planes:
    for line in plane.lines:
      if not line.name.startswith(POOL_THREAD):
        continue
      for event in line.events:
        if event.name.startswith('ThunkExecutor'):
          executor += event.duration_ns
        elif not event.name.startswith('while'):  # a loop holds its body's ops
          total[event.name] += event.duration_ns
          count[event.name] += 1
  return total, count, executor


def by_kind(total: dict) -> collections.Counter:
  """Op time per kind: 'ynn_fusion.12' and 'ynn_fusion.3' are one kind."""
  kinds = collections.Counter()
  for name, ns in total.items():
    kinds[name.rsplit('.', 1)[0] if name.rsplit('.', 1)[-1].isdigit()
          else name] += ns
  return kinds


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  cli.tune_malloc()
  import time  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  from benchmarks import jax_bench, specs  # pylint: disable=g-import-not-at-top
  runner = jax_bench.JaxRunner(specs.get_spec(_MODEL.value))
  runner.run(5)
  with tempfile.TemporaryDirectory() as trace_dir:
    with jax.profiler.trace(trace_dir):
      t0 = time.perf_counter()
      runner.run(_STEPS.value)
      wall = (time.perf_counter() - t0) / _STEPS.value
    path = glob.glob(os.path.join(trace_dir, '**', '*.xplane.pb'),
                     recursive=True)[0]
    total, count, executor = op_times(path)
  per_step = lambda ns: ns / 1e6 / _STEPS.value
  print(f'{_MODEL.value}: {1e3 * wall:.1f} ms per traced step (wall), '
        f'{per_step(sum(total.values())):.1f} ms of op time on the pool '
        f'threads, {sum(count.values()) / _STEPS.value:,.0f} op events, '
        f'executor {per_step(executor):.1f} ms')
  print('\n| op kind | ms per step |\n|---|---|')
  for kind, ns in by_kind(total).most_common(_TOP.value):
    print(f'| {kind} | {per_step(ns):.2f} |')


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
