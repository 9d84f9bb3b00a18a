"""Training and evaluation loop: `train_and_evaluate(config, workdir)`.

The pure core is `train_step(state, batch, *, model, tx)` and
`eval_step(params, batch, *, model)`; the loop around them places data on the
mesh, logs, evaluates and checkpoints. Randomness of step s is
`fold_in(state.rng, s)`, so a resumed run draws what an uninterrupted one does.
"""

import json
import os
import time
import uuid

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.experimental import multihost_utils

from mmfusion import checkpoint as checkpoint_lib
from mmfusion import errors, metrics, models, reporting, sharding
from mmfusion.data import pipeline


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: dict
  opt_state: optax.OptState
  rng: jax.Array  # raw uint32[2] key: folded with the step for dropout


def make_optimizer(config) -> optax.GradientTransformation:
  """AdamW with linear warmup and cosine decay (optionally clipped)."""
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


def create_train_state(model, tx, example_batch, seed: int) -> TrainState:
  init_rng, train_rng = jax.random.split(jax.random.PRNGKey(seed))
  params = model.init({'params': init_rng}, example_batch, train=False)['params']
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    opt_state=tx.init(params), rng=train_rng)


def cross_entropy(logits_BxC, label_B, weight_B=None):
  """Mean softmax cross-entropy over the (weighted) batch."""
  nll_B = optax.softmax_cross_entropy_with_integer_labels(logits_BxC, label_B)
  if weight_B is None:
    return nll_B.mean()
  return jnp.sum(nll_B * weight_B) / jnp.maximum(jnp.sum(weight_B), 1.0)


def train_step(state: TrainState, batch, *, model, tx):
  """One AdamW update on `batch`; returns (new_state, metrics)."""
  dropout_rng = jax.random.fold_in(state.rng, state.step)

  def loss_fn(params):
    logits_BxC, _ = model.apply({'params': params}, batch, train=True,
                                rngs={'dropout': dropout_rng})
    return cross_entropy(logits_BxC, batch['label']), logits_BxC

  (loss, logits_BxC), grads = jax.value_and_grad(loss_fn, has_aux=True)(
      state.params)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  out = {'loss': loss,
         'accuracy': jnp.mean(logits_BxC.argmax(-1) == batch['label']),
         'grad_norm': optax.tree.norm(grads)}
  return state.replace(step=state.step + 1, params=params,
                       opt_state=opt_state), out


def eval_step(params, batch, *, model):
  """Logits of one batch, with the labels and validity they belong to."""
  logits_BxC, _ = model.apply({'params': params}, batch, train=False)
  return {'logits': logits_BxC, 'label': batch['label'], 'valid': batch['valid']}


def evaluate(eval_fn, params, source, config, mesh) -> dict:
  """Metrics of `params` over a whole split, gathered from every process."""
  outs = []
  per_process = config.batch_size // jax.process_count()
  for local in pipeline.eval_batches(
      source, batch_size=per_process, modalities=config.data.modalities,
      process_index=jax.process_index(), process_count=jax.process_count()):
    out = eval_fn(params, sharding.to_global(local, mesh))
    outs.append(multihost_utils.process_allgather(out, tiled=True))
  cat = {k: np.concatenate([o[k] for o in outs]) for k in outs[0]}
  valid = cat['valid'].astype(bool)
  return metrics.classification(cat['logits'][valid], cat['label'][valid])


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

  # ----------------------------------------------------------------- Data ---
  models.check_config(config.model)  # names first: they fail fastest
  builder = pipeline.get_builder(config.data)
  pipeline.check_modalities(builder, config.data.modalities)
  num_classes = builder.info.features['label'].num_classes
  model = models.from_config(config.model, num_classes)
  tx = make_optimizer(config)
  mesh = sharding.make_mesh(config.get('num_devices', 0))
  sharding.check_batch_size(config.batch_size, mesh)

  # --------------------------------------------- Workdir and checkpoints ---
  _writable(workdir)
  ckpt = checkpoint_lib.Checkpointer(workdir, max_to_keep=config.get(
      'keep_checkpoints', 3))
  ckpt.check_compatible(config_dict)
  pipeline.prepare(builder)
  sources = {s: builder.as_data_source(split=s)
             for s in ('train', 'validation', 'test')}
  per_process = config.batch_size // jax.process_count()
  train_iter = iter(pipeline.train_batches(
      sources['train'], batch_size=per_process, seed=config.seed,
      modalities=config.data.modalities, process_index=jax.process_index(),
      process_count=jax.process_count()))

  # ---------------------------------------------------------------- Model ---
  example = next(pipeline.eval_batches(
      sources['validation'], batch_size=per_process,
      modalities=config.data.modalities))
  example = jax.tree.map(lambda x: x[:1], example)
  replicated = sharding.replicated(mesh)
  state = jax.jit(lambda: create_train_state(model, tx, example, config.seed),
                  out_shardings=replicated)()
  num_params = sum(x.size for x in jax.tree.leaves(state.params))
  start = ckpt.latest_step()
  if start is not None:
    state, data_state = ckpt.restore(start, checkpoint_lib.abstract(state))
    train_iter.set_state(data_state)
    print(f'Resuming from step {start} of {ckpt.directory}.', flush=True)

  # --------------------------------------------------------- Update step ---
  batch_sharding = sharding.batch_sharding(mesh)
  update = jax.jit(lambda s, b: train_step(s, b, model=model, tx=tx),
                   in_shardings=(replicated, batch_sharding),
                   out_shardings=(replicated, replicated), donate_argnums=0)
  eval_fn = jax.jit(lambda p, b: eval_step(p, b, model=model),
                    in_shardings=(replicated, batch_sharding))

  # ----------------------------------------------------------------- Loop ---
  writer = reporting.MetricWriter(workdir)
  step = int(state.step)
  progress = reporting.Progress(config.total_steps, config.batch_size, step)
  log_every = config.get('log_every', 50)
  pending = []
  while step < config.total_steps:
    state, out = update(state, sharding.to_global(next(train_iter), mesh))
    step += 1
    pending.append(out)
    if step % log_every == 0 or step == config.total_steps:
      logged = {k: float(np.mean([o[k] for o in jax.device_get(pending)]))
                for k in ('loss', 'accuracy', 'grad_norm')}
      pending = []
      _check_finite(step, logged)
      writer.write(step, 'train', logged)
      progress.update(step, logged)
    if step % config.eval_every == 0 and step < config.total_steps:
      writer.write(step, 'validation',
                   evaluate(eval_fn, state.params, sources['validation'],
                            config, mesh))
      progress.restart(step)
    if step % config.checkpoint_every == 0 or step == config.total_steps:
      ckpt.save(step, state, train_iter.get_state(), config_dict)
  ckpt.wait()

  # -------------------------------------------------------------- Results ---
  results = {split: evaluate(eval_fn, state.params, sources[split], config, mesh)
             for split in ('validation', 'test')}
  for split, m in results.items():
    writer.write(step, split, m)
  writer.close()
  ckpt.close()
  summary = {**results, 'step': step, 'num_params': int(num_params),
             'data': config.data.name, 'fusion': config.model.fusion}
  if jax.process_index() == 0:
    with open(os.path.join(workdir, 'results.json'), 'w') as f:
      json.dump(summary, f, indent=2)
    print(reporting.table(results), flush=True)
  return summary


def _check_finite(step: int, logged: dict):
  """Stops at once on a non-finite loss instead of training on garbage."""
  bad = [k for k, v in logged.items() if not np.isfinite(v)]
  if bad:
    raise FloatingPointError(
        f'non-finite {", ".join(bad)} by step {step}; the last good '
        f'checkpoint is kept. Lower optimizer.learning_rate or check the data.')
