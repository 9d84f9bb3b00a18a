"""Training and evaluation loop: `train_and_evaluate(config, workdir)`.

The pure core is `train_step(state, batch, *, model, tx)`; the loop around it
places data on the mesh, logs, evaluates, checkpoints and handles preemption.
Randomness of step s is `fold_in(state.rng, s)`, so a resumed run draws what an
uninterrupted one does.
"""

import json
import os
import uuid

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from mmfusion import checkpoint as checkpoint_lib
from mmfusion import errors, evaluate, models, preemption, reporting, sharding
from mmfusion.data import pipeline


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: dict
  opt_state: optax.OptState
  rng: jax.Array  # raw uint32[2] key: folded with the step for dropout
  lr_scale: jax.Array  # multiplies the schedule: a vmapped lr sweep's value


def make_optimizer(config) -> optax.GradientTransformation:
  """AdamW with linear warmup and cosine decay, optionally clipped."""
  opt = config.optimizer
  if opt.name != 'adamw':
    raise errors.unknown_name('optimizer', opt.name, ['adamw'])
  schedule = optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=opt.learning_rate,
      warmup_steps=opt.warmup_steps,
      decay_steps=max(config.total_steps, opt.warmup_steps + 1),
      end_value=opt.learning_rate * opt.final_lr_fraction)
  tx = optax.adamw(schedule, b1=opt.b1, b2=opt.b2,
                   weight_decay=opt.weight_decay)
  if opt.get('grad_clip_norm'):
    tx = optax.chain(optax.clip_by_global_norm(opt.grad_clip_norm), tx)
  return tx


def create_train_state(model, tx, example_batch, seed,
                       lr_scale=1.0) -> TrainState:
  init_rng, train_rng = jax.random.split(jax.random.PRNGKey(seed))
  params = model.init({'params': init_rng}, example_batch, train=False)['params']
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    opt_state=tx.init(params), rng=train_rng,
                    lr_scale=jnp.asarray(lr_scale, jnp.float32))


def init_members(model, tx, example_batch, seeds, lr_scales) -> TrainState:
  """K train states stacked on a leading axis, initialised one after another.

  Not `jax.vmap`: vmapped, flax's orthogonal initialisers (GRU, LSTM) become
  one batched LAPACK QR, which jaxlib splits over XLA:CPU's intra-op thread
  pool from inside a task of that pool; two such QRs at once can leave every
  worker waiting for a free one, and the program never finishes (seen on 2
  cores). `lax.map` keeps each QR unbatched; the states are the same.
  """
  return jax.lax.map(
      lambda sl: create_train_state(model, tx, example_batch, *sl),
      (jnp.asarray(seeds), jnp.asarray(lr_scales)))


def members(config):
  """(seeds [K], lr_scales [K]) of the K runs that `config.vmap` trains at once.

  `vmap.key == 'seed'`: seeds config.seed .. config.seed + K - 1. `vmap.key ==
  'optimizer.learning_rate'`: one seed, `vmap.values` as peak learning rates
  (AdamW's update is linear in the learning rate, so a scale is exact).
  """
  vmap = config.get('vmap') or {}
  k, key = vmap.get('size', 1), vmap.get('key', 'seed')
  if key == 'seed':
    return np.arange(config.seed, config.seed + k), np.ones(k, np.float32)
  if key == 'optimizer.learning_rate':
    values = tuple(vmap.get('values') or ())
    if len(values) != k:
      raise errors.UserError(
          f'vmap.values has {len(values)} learning rates but vmap.size={k}; '
          f'give exactly {k}.')
    return (np.full(k, config.seed),
            np.asarray(values, np.float32) / config.optimizer.learning_rate)
  raise errors.UserError(
      f'vmap.key={key!r} cannot be vmapped; use seed or '
      f'optimizer.learning_rate.')


def cross_entropy(logits_BxC, label_B):
  return optax.softmax_cross_entropy_with_integer_labels(
      logits_BxC, label_B).mean()


def grad_norms(grads) -> dict:
  """Global gradient norm and one per model part (`grad_norm/encoder_text`)."""
  out = {'grad_norm': optax.tree.norm(grads)}
  out.update({f'grad_norm/{part}': optax.tree.norm(g)
              for part, g in grads.items()})
  return out


def train_step(state: TrainState, batch, *, model, tx, accum_steps: int = 1):
  """One AdamW update on `batch`; returns (new_state, metrics).

  With `accum_steps` > 1 the batch is cut into that many micro-batches whose
  gradients are averaged (a scan, so memory is one micro-batch's).
  """
  dropout_rng = jax.random.fold_in(state.rng, state.step)

  def loss_fn(params, micro, rng):
    logits_BxC, _ = model.apply({'params': params}, micro, train=True,
                                rngs={'dropout': rng})
    correct = jnp.mean(logits_BxC.argmax(-1) == micro['label'])
    return cross_entropy(logits_BxC, micro['label']), correct

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  if accum_steps == 1:
    (loss, accuracy), grads = grad_fn(state.params, batch, dropout_rng)
  else:
    micro = jax.tree.map(
        lambda x: x.reshape((accum_steps, -1) + x.shape[1:]), batch)

    def accumulate(carry, xs):
      i, micro_batch = xs
      (l, a), g = grad_fn(state.params, micro_batch,
                          jax.random.fold_in(dropout_rng, i))
      return jax.tree.map(jnp.add, carry, (l, a, g)), None

    zeros = (0.0, 0.0, jax.tree.map(jnp.zeros_like, state.params))
    (loss, accuracy, grads), _ = jax.lax.scan(
        accumulate, zeros, (jnp.arange(accum_steps), micro))
    loss, accuracy, grads = jax.tree.map(lambda x: x / accum_steps,
                                         (loss, accuracy, grads))
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  updates = jax.tree.map(lambda u: u * state.lr_scale, updates)
  params = optax.apply_updates(state.params, updates)
  out = {'loss': loss, 'accuracy': accuracy, **grad_norms(grads)}
  return state.replace(step=state.step + 1, params=params,
                       opt_state=opt_state), out


def check_finite(step: int, m: dict):
  """Stops at a step whose loss or gradients are NaN or Inf, naming the part."""
  bad = [k for k, v in m.items() if not np.isfinite(v)]
  if bad:
    parts = [k.split('/', 1)[1] for k in bad if k.startswith('grad_norm/')]
    where = f' (non-finite gradients in {", ".join(parts)})' if parts else ''
    raise errors.UserError(
        f'training diverged at step {step}: {", ".join(bad)} not finite'
        f'{where}; the last good checkpoint is kept. Lower '
        f'optimizer.learning_rate, set optimizer.grad_clip_norm, or check '
        f'the data.')


def _writable(workdir: str):
  """Fails in one sentence unless files can be created in `workdir`."""
  try:
    os.makedirs(workdir, exist_ok=True)
    probe = os.path.join(workdir, f'.write-test-{uuid.uuid4().hex}')
    with open(probe, 'w'):
      pass
    os.remove(probe)
  except OSError as e:
    raise errors.UserError(
        f'cannot write to workdir {workdir!r} ({e.strerror}); pass a '
        f'--workdir you can write to.') from None


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains `config` in `workdir`, resuming from its latest checkpoint."""
  config_dict = config.to_dict()

  # ------------------------------------------------ Checks that fail fast ---
  models.check_config(config.model)
  builder = pipeline.get_builder(config.data)
  pipeline.check_modalities(builder, config.data.modalities)
  model = models.from_config(config.model, builder.info.features['label'].num_classes)
  tx = make_optimizer(config)
  mesh = sharding.make_mesh(config.get('num_devices', 0),
                            config.get('mesh_model', 1))
  sharding.check_batch_size(config.batch_size, mesh)
  accum = config.get('grad_accum_steps', 1)
  if (config.batch_size // jax.process_count()) % accum:
    raise errors.UserError(
        f'grad_accum_steps={accum} does not divide the per-process batch of '
        f'{config.batch_size // jax.process_count()}; pick a divisor.')
  _writable(workdir)

  # ----------------------------------------------------------------- Data ---
  pipeline.prepare(builder)
  eval_splits = ('validation', 'test') + tuple(
      s for s in config.data.get('extra_eval_splits', ()) if s not in
      ('validation', 'test'))
  missing = [s for s in eval_splits if s not in builder.info.splits]
  if missing:
    raise errors.UserError(
        f'{builder.info.full_name} has no split {missing}; its splits are '
        f'{list(builder.info.splits)} (fix data.extra_eval_splits).')
  sources = {s: builder.as_data_source(split=s)
             for s in ('train',) + eval_splits}
  per_process = config.batch_size // jax.process_count()
  spec = pipeline.batch_spec(builder, config.data.modalities, per_process)
  train_iter = iter(pipeline.train_batches(
      sources['train'], batch_size=per_process, seed=config.seed,
      modalities=config.data.modalities, process_index=jax.process_index(),
      process_count=jax.process_count(),
      modality_dropout=config.data.get('modality_dropout')))

  # ------------------------------------------------- Model and its state ---
  example = {k: np.zeros((1,) + shape[1:], dtype)
             for k, (shape, dtype) in spec.items()}
  seeds, lr_scales = members(config)
  vmapped = len(seeds) > 1  # K runs in one program, each leaf [K, ...]
  if vmapped:
    init = lambda: init_members(model, tx, example, seeds, lr_scales)
  else:
    init = lambda: create_train_state(model, tx, example, config.seed)
  abstract = jax.eval_shape(init)
  state_sharding = sharding.state_shardings(
      abstract, mesh, fsdp=config.get('fsdp', False),
      fsdp_min_size=config.get('fsdp_min_size', 2**14))
  ckpt = checkpoint_lib.Checkpointer(
      workdir, max_to_keep=config.get('keep_checkpoints', 3))
  start, state, data_state = ckpt.restore_latest(
      jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                   abstract, state_sharding), config_dict)
  if start is None:
    state = jax.jit(init, out_shardings=state_sharding)()
  else:
    train_iter.set_state(data_state)
    print(f'Resuming from step {start} of {ckpt.directory}.', flush=True)
  num_params = sum(x.size for x in jax.tree.leaves(state.params)) // len(seeds)

  # --------------------------------------------------------- Update step ---
  replicated = sharding.replicated(mesh)
  batch_sharding = sharding.batch_sharding(mesh)
  step_fn = lambda s, b: train_step(s, b, model=model, tx=tx,
                                    accum_steps=accum)
  eval_step = lambda p, b: evaluate.eval_step(p, b, model=model)
  if vmapped:  # every member sees the same batches
    step_fn = jax.vmap(step_fn, in_axes=(0, None))
    eval_step = jax.vmap(eval_step, in_axes=(0, None), out_axes={
        'logits': 0, 'label': None, 'valid': None})
  update = jax.jit(step_fn, in_shardings=(state_sharding, batch_sharding),
                   out_shardings=(state_sharding, replicated), donate_argnums=0)
  eval_fn = jax.jit(eval_step,
                    in_shardings=(state_sharding.params, batch_sharding))

  # ----------------------------------------------------------------- Loop ---
  writer = reporting.MetricWriter(workdir)
  best = _Best(workdir, config)
  step = int(np.max(state.step))  # members share the step
  progress = reporting.Progress(config.total_steps, config.batch_size, step)
  log_every = config.get('log_every', 50)
  pending = []  # (step, device metrics) not yet checked and logged

  def flush():
    """Checks and logs `pending`; called before anything is saved."""
    fetched = jax.device_get(pending)
    pending.clear()
    for s, m in fetched:
      for k, one in enumerate(_split_members(m, vmapped)):
        check_finite(s, one)
        writer.write(s, 'train', one, member=k if vmapped else None)
    if fetched:
      progress.update(fetched[-1][0], {
          k: float(np.mean([m[k] for _, m in fetched]))
          for k in ('loss', 'accuracy', 'grad_norm')})

  with preemption.Preemption() as preempt:
    while step < config.total_steps:
      batch = next(train_iter)
      pipeline.check_batch(batch, spec)
      state, out = update(state, sharding.to_global(batch, mesh))
      step += 1
      pending.append((step, out))
      if step % log_every == 0 or step == config.total_steps:
        flush()
        if preempt.requested():
          ckpt.save(step, state, train_iter.get_state(), config_dict, force=True)
          ckpt.wait()
          print(f'Preempted (SIGTERM) at step {step}: checkpoint saved; run '
                f'the same command again to resume.', flush=True)
          return {'preempted': True, 'step': step}
      if step % config.eval_every == 0 and step < config.total_steps:
        flush()
        val = evaluate.evaluate(eval_fn, state.params, sources['validation'],
                                config, mesh)
        _write(writer, step, 'validation', val)
        best.update(step, _mean(val), state, train_iter.get_state(),
                    config_dict)
        progress.restart(step)
      if step % config.checkpoint_every == 0 or step == config.total_steps:
        flush()
        ckpt.save(step, state, train_iter.get_state(), config_dict)
  ckpt.wait()

  # -------------------------------------------------------------- Results ---
  results = {split: evaluate.evaluate(eval_fn, state.params, sources[split],
                                      config, mesh, with_subsets=True)
             for split in eval_splits}
  best.update(step, _mean(results['validation']), state,
              train_iter.get_state(), config_dict)
  for split, m in results.items():
    _write(writer, step, split, m)
  writer.close()
  best.close()
  ckpt.close()
  summary = {split: _mean(m) for split, m in results.items()}
  if vmapped:
    summary['members'] = [
        {'member': k, 'seed': int(seeds[k]),
         'learning_rate': float(lr_scales[k] * config.optimizer.learning_rate),
         **{split: m[k] for split, m in results.items()}}
        for k in range(len(seeds))]
  summary.update(step=step, num_params=int(num_params), data=config.data.name,
                 fusion=config.model.fusion, best=best.record)
  if jax.process_index() == 0:
    with open(os.path.join(workdir, 'results.json'), 'w') as f:
      json.dump(summary, f, indent=2)
    print(reporting.table({s: summary[s] for s in results}), flush=True)
  return summary


def _split_members(m: dict, vmapped: bool):
  """Per-member float dicts of one step's (possibly [K]-shaped) metrics."""
  if not vmapped:
    return [{k: float(v) for k, v in m.items()}]
  k = len(next(iter(m.values())))
  return [{name: float(v[i]) for name, v in m.items()} for i in range(k)]


def _mean(results):
  """A metrics dict, or the mean over members of a list of them."""
  if isinstance(results, dict):
    return results
  mean = {k: float(np.mean([r[k] for r in results])) for k in results[0]}
  if 'examples' in mean:  # a count, the same for every member
    mean['examples'] = results[0]['examples']
  return mean


def _write(writer, step, split, results):
  if isinstance(results, dict):
    writer.write(step, split, results)
  else:
    for k, r in enumerate(results):
      writer.write(step, split, r, member=k)


class _Best:
  """Keeps the checkpoint with the best validation `config.best_metric`."""

  def __init__(self, workdir: str, config):
    self.metric = config.get('best_metric', 'accuracy')
    self.mode = config.get('best_mode', 'max')
    self.path = os.path.join(workdir, 'best', 'best.json')
    self.ckpt = checkpoint_lib.Checkpointer(workdir, max_to_keep=1,
                                            subdir='best')
    self.record = None
    if os.path.exists(self.path):
      with open(self.path) as f:
        self.record = json.load(f)

  def update(self, step, validation: dict, state, data_state, config_dict):
    value = validation[self.metric]
    if self.record is not None:
      old = self.record['value']
      better = value > old if self.mode == 'max' else value < old
      if self.record['step'] == step or not better:
        return
    self.ckpt.save(step, state, data_state, config_dict)
    self.ckpt.wait()
    self.record = {'step': step, 'metric': self.metric, 'value': value}
    if jax.process_index() == 0:
      with open(self.path, 'w') as f:
        json.dump(self.record, f)

  def close(self):
    self.ckpt.close()
