"""What a config costs: parameters per part, FLOPs, peak memory, compile time.

  python -m mmfusion.cost --config=mmfusion/configs/seed.py[:ARG] \\
      [--config.model.fusion=NAME] [--all_fusions]

`report(config)` returns a JSON-ready dict for ablation tools. Costs are XLA's
own analyses of the compiled forward pass (logits only, `train=False`) and of
one `train.train_step` (donating the state, as the loop does) on one global
batch placed on one device: FLOPs are `compiled.cost_analysis()['flops']`,
peak memory is `compiled.memory_analysis().peak_memory_in_bytes` (arguments,
outputs and temporaries live at once, donated buffers counted once). The batch
is abstract: shapes and dtypes come from the dataset's feature spec, so no data
is built or read.
"""

import time

import jax
from absl import app, flags, logging

from mmfusion import build, fusion, train
from mmfusion.runtime import cli, errors

_ALL = flags.DEFINE_bool(
    'all_fusions', False, 'Print one row per registered fusion method.')


def param_counts(params, members: int = 1) -> dict:
  """Parameters of one member per top-level part (`encoder_<m>`, `fusion`,
  `head`...); `params` holds `members` runs' stacked parameters."""
  count = lambda tree: sum(int(x.size) for x in jax.tree.leaves(tree)
                           ) // members
  counts = {'fusion': 0}  # a fusion without parameters still gets a row
  counts.update({part: count(tree) for part, tree in params.items()})
  order = lambda p: (not p.startswith('encoder_'), p != 'fusion', p)
  counts = {p: counts[p] for p in sorted(counts, key=order)}
  counts['total'] = sum(counts.values())
  return counts


def compiled_cost(fn, *args, donate=()) -> dict:
  """FLOPs, memory and seconds to lower and compile `jax.jit(fn)(*args)`."""
  t0 = time.perf_counter()
  compiled = jax.jit(fn, donate_argnums=donate).lower(*args).compile()
  seconds = time.perf_counter() - t0
  analysis = compiled.cost_analysis()
  if isinstance(analysis, (list, tuple)):  # older JAX: one dict per device
    analysis = analysis[0] if analysis else None
  out = {'flops': float(analysis['flops']) if analysis else None,
         'compile_s': seconds}
  mem = compiled.memory_analysis()
  if mem is None:  # a backend without memory analysis
    return {**out, 'peak_bytes': None}
  sizes = {k: int(getattr(mem, f'{k}_size_in_bytes'))
           for k in ('argument', 'output', 'temp', 'alias')}
  # Donated inputs alias outputs, so their bytes count once.
  fallback = sizes['argument'] + sizes['output'] + sizes['temp'] - sizes['alias']
  peak = int(getattr(mem, 'peak_memory_in_bytes', 0) or fallback)
  return {**out, 'peak_bytes': peak,
          **{f'{k}_bytes': v for k, v in sizes.items()}}


def report(config, batch_size: int | None = None) -> dict:
  """Parameters and compiled costs of `config` for one batch (default: the
  config's global batch), as a plain JSON-serialisable dict.

  The train step is the loop's: `grad_accum_steps` micro-batches (its FLOPs
  are those of the same step without accumulation, as XLA counts a loop's
  body once) and the K runs of `config.vmap` in one program; parameters are
  counted for one run.
  """
  run = build.run(config)
  batch_size = int(batch_size or config.batch_size)
  accum = config.grad_accum_steps
  if batch_size % accum:
    raise errors.UserError(
        f'grad_accum_steps={accum} does not divide the batch of {batch_size}; '
        f'pick a divisor.')
  spec = run.abstract_batch(batch_size)
  for key, s in spec.items():
    if any(d is None or d < 0 for d in s.shape) or s.dtype.kind not in 'biuf':
      raise errors.UserError(
          f'cannot cost {key!r}: it is {s.dtype} of shape {list(s.shape)}, and '
          f'a cost needs fixed numeric shapes.')
  model, members = run.model, run.members
  state = run.abstract_state()
  step = lambda k: members.step(lambda s, b: train.train_step(
      s, b, model=model, task=run.task, tx=run.tx, accum_steps=k))
  forward = members.apply(lambda p, b: model.apply({'params': p}, b)[0])
  train_step = compiled_cost(step(accum), state, spec, donate=0)
  if accum > 1:  # XLA counts a scan's body once: take the one-pass FLOPs
    train_step['flops'] = compiled_cost(step(1), state, spec)['flops']
  return {
      'fusion': config.model.fusion,
      'stage': fusion.get_fusion(config.model.fusion).stage,
      'data': config.data.name,
      'modalities': list(config.data.modalities),
      'batch_size': batch_size,
      'task': run.task.name,
      'metric': run.task.PRIMARY,  # what the ablation report ranks by
      'higher_is_better': run.task.direction(run.task.PRIMARY) == 'max',
      'chance': run.task.chance(),
      'num_outputs': run.task.num_outputs,
      'num_classes': run.data.num_classes,
      'members': members.size,
      'backend': jax.default_backend(),
      'kernels': model.kernels.name,
      'params': param_counts(state.params, members.size),
      'forward': compiled_cost(forward, state.params, spec),
      'train_step': train_step,
  }


def _table(header, rows) -> str:
  lines = ['| ' + ' | '.join(header) + ' |', '|---' * len(header) + '|']
  lines += ['| ' + ' | '.join(str(c) for c in row) + ' |' for row in rows]
  return '\n'.join(lines)


def _g(flops):
  return '-' if flops is None else f'{flops / 1e9:.4g}'


def _mb(nbytes):
  return '-' if nbytes is None else f'{nbytes / 2**20:.4g}'


def format_report(r: dict) -> str:
  """Two Markdown tables: parameters per part, then the compiled costs."""
  title = (f'{r["fusion"]} ({r["stage"]}) on {r["data"]}, batch '
           f'{r["batch_size"]}, {r["backend"]}')
  if r['members'] > 1:
    title += f', {r["members"]} runs in one program (config.vmap)'
  parts = _table(['part', 'params'], [(p, f'{n:,}')
                                      for p, n in r['params'].items()])
  costs = _table(['pass', 'GFLOPs', 'peak MB', 'compile s'], [
      (k, _g(r[k]['flops']), _mb(r[k]['peak_bytes']),
       f'{r[k]["compile_s"]:.2f}') for k in ('forward', 'train_step')])
  return f'{title}\n\n{parts}\n\n{costs}'


def fusion_rows(config, batch_size: int | None = None) -> list:
  """One `report` per registered fusion; a fusion that cannot take `config`
  gives {'fusion': name, 'error': sentence} instead."""
  rows = []
  for name in fusion.FUSIONS:
    variant = config.copy_and_resolve_references()
    variant.model.fusion = name
    try:
      rows.append(report(variant, batch_size))
    except errors.UserError as e:
      rows.append({'fusion': name, 'error': str(e)})
  return rows


def format_fusion_rows(rows: list) -> str:
  header = ['fusion', 'stage', 'params', 'fwd GFLOPs', 'step GFLOPs',
            'fwd peak MB', 'step peak MB', 'compile s']
  cells = []
  for r in rows:
    if 'error' in r:
      cells.append([r['fusion'], r['error']] + [''] * (len(header) - 2))
      continue
    fwd, step = r['forward'], r['train_step']
    cells.append([r['fusion'], r['stage'], f'{r["params"]["total"]:,}',
                  _g(fwd['flops']), _g(step['flops']), _mb(fwd['peak_bytes']),
                  _mb(step['peak_bytes']),
                  f'{fwd["compile_s"] + step["compile_s"]:.2f}'])
  return _table(header, cells)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  logging.set_verbosity(logging.ERROR)  # TFDS chatter
  config = cli.config()
  try:
    if _ALL.value:
      rows = fusion_rows(config)
      print(f'{config.data.name}, batch {config.batch_size}, '
            f'{jax.default_backend()}; compile s = forward + train step\n')
      print(format_fusion_rows(rows), flush=True)
    else:
      print(format_report(report(config)), flush=True)
  except errors.UserError as e:
    cli.fail(str(e))


if __name__ == '__main__':
  flags.mark_flags_as_required(['config'])
  flags.declare_key_flag('config')
  app.run(main, flags_parser=cli.parse_flags)
