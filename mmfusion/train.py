"""Training and evaluation loop: `train_and_evaluate(config, workdir)`.

The pure core is `train_step(state, batch, *, model, task, tx)` (the task,
`mmfusion.tasks`, gives the loss); the loop around it
places data on the mesh, logs, evaluates, checkpoints and handles preemption.
Randomness of step s is `fold_in(state.rng, s)`, so a resumed run draws what an
uninterrupted one does. Everything the loop trains is built by `build.run`.
"""

import json
import os
import uuid

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.experimental import multihost_utils

from mmfusion import build, evaluate, schema, sharding
from mmfusion import checkpoint as checkpoint_lib
from mmfusion import members as members_lib
from mmfusion.data import pipeline
from mmfusion.runtime import errors, files, preemption, reporting


def grad_norms(grads) -> dict:
  """Global gradient norm and one per model part (`grad_norm/encoder_text`)."""
  out = {'grad_norm': optax.tree.norm(grads)}
  out.update({f'grad_norm/{part}': optax.tree.norm(g)
              for part, g in grads.items()})
  return out


def train_step(state: build.TrainState, batch, *, model, task, tx,
               accum_steps: int = 1):
  """One AdamW update on `batch`; returns (new_state, metrics): the task's
  loss and train metric, and gradient norms.

  With `accum_steps` > 1 the batch is cut into that many micro-batches whose
  gradients are averaged (a scan, so memory is one micro-batch's).
  """
  dropout_rng = jax.random.fold_in(state.rng, state.step)

  def loss_fn(params, micro, rng):
    out, _ = model.apply({'params': params}, micro, train=True,
                         rngs={'dropout': rng})
    return task.loss(out, micro)

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  if accum_steps == 1:
    (loss, shown), grads = grad_fn(state.params, batch, dropout_rng)
  else:
    micro = jax.tree.map(
        lambda x: x.reshape((accum_steps, -1) + x.shape[1:]), batch)

    def accumulate(carry, xs):
      i, micro_batch = xs
      (l, m), g = grad_fn(state.params, micro_batch,
                          jax.random.fold_in(dropout_rng, i))
      return jax.tree.map(jnp.add, carry, (l, m, g)), None

    zeros = jax.eval_shape(grad_fn, state.params,
                           jax.tree.map(lambda x: x[0], micro), dropout_rng)
    zeros = jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), zeros)
    (loss, shown), grads = zeros
    (loss, shown, grads), _ = jax.lax.scan(
        accumulate, (loss, shown, grads), (jnp.arange(accum_steps), micro))
    loss, shown, grads = jax.tree.map(lambda x: x / accum_steps,
                                      (loss, shown, grads))
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  updates = jax.tree.map(lambda u: u * state.lr_scale, updates)
  params = optax.apply_updates(state.params, updates)
  out = {'loss': loss, **shown, **grad_norms(grads)}
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


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       allow_changed=(), start_over: bool = False) -> dict:
  """Trains `config` in `workdir`, resuming from its latest checkpoint.

  Everything is checked before the workdir is touched. `allow_changed` names
  experiment keys (`schema.OVERRIDABLE`) a resume may change, recorded in
  `workdir/resume_changes.jsonl`; `start_over` trains from step 0 when every
  checkpoint is damaged. A finished run is not run again.
  """
  config_dict = config.to_dict()

  # ---------------------------- Checks, before anything is written there ---
  run = build.run(config)
  builder, members, mesh = run.builder, run.members, run.mesh
  _check_allowed(allow_changed)
  eval_splits = ('validation', 'test') + tuple(
      s for s in config.data.extra_eval_splits if s not in
      ('validation', 'test'))
  pipeline.prepare(builder)
  missing = [s for s in eval_splits if s not in builder.info.splits]
  if missing:
    raise errors.UserError(
        f'{builder.info.full_name} has no split {missing}; its splits are '
        f'{list(builder.info.splits)} (fix data.extra_eval_splits).')
  build.check_data(config, builder.info.splits['train'].num_examples)
  abstract = run.sharded_abstract_state()
  start, state, data_state, changes = _resume_point(
      workdir, abstract, config_dict, allow_changed, start_over)
  if start is not None and start > config.total_steps:
    raise errors.UserError(
        f'{workdir} holds a checkpoint at step {start}, past total_steps='
        f'{config.total_steps}; pass --config.total_steps={start} or more, '
        f'or a new --workdir.')
  done = _finished(workdir, start, config.total_steps)
  if done is not None:
    return done
  _writable(workdir)

  # ----------------------------------------------------------------- Data ---
  if jax.process_index() == 0:  # what mmfusion.load needs without the data
    run.data.save(workdir)
    _record_changes(workdir, start, changes)
  sources = {s: builder.as_data_source(split=s)
             for s in ('train',) + eval_splits}
  spec = run.batch_spec()
  train_iter = iter(pipeline.train_batches(
      sources['train'], batch_size=run.per_process_batch, seed=config.seed,
      modalities=config.data.modalities, process_index=jax.process_index(),
      process_count=jax.process_count(),
      modality_dropout=config.data.modality_dropout,
      augment=config.data.augment,
      targets=run.task.TARGETS))

  # ------------------------------------------------- Model and its state ---
  state_sharding = jax.tree.map(lambda a: a.sharding, abstract)
  ckpt = checkpoint_lib.Checkpointer(workdir,
                                     max_to_keep=config.keep_checkpoints)
  if start is None:
    state = run.init_state()
  else:
    train_iter.set_state(data_state)
    print(f'Resuming from step {start} of {ckpt.directory}.', flush=True)

  # --------------------------------------------------------- Update step ---
  replicated = sharding.replicated(mesh)
  batch_sharding = sharding.batch_sharding(mesh)
  update = jax.jit(
      members.step(lambda s, b: train_step(
          s, b, model=run.model, task=run.task, tx=run.tx,
          accum_steps=config.grad_accum_steps)),
      in_shardings=(state_sharding, batch_sharding),
      out_shardings=(state_sharding, replicated), donate_argnums=0)
  eval_fn = jax.jit(evaluate.eval_fn(run.model, run.task, members),
                    in_shardings=(state_sharding.params, batch_sharding))

  # ----------------------------------------------------------------- Loop ---
  # A fresh start (--start_over) logs from step 1 again: drop what went before.
  writer = reporting.MetricWriter(workdir, resume_step=start or 0,
                                  final_step=config.total_steps)
  best = _Best(workdir, config)
  step = int(np.max(state.step))  # members share the step
  progress = reporting.Progress(config.total_steps, config.batch_size, step)
  pending = []  # (step, device metrics) not yet checked and logged
  evaluate_split = lambda split, **kw: evaluate.evaluate(
      eval_fn, state.params, sources[split], config, mesh, run.task, **kw)

  def flush():
    """Checks and logs `pending`; called before anything is saved."""
    fetched = jax.device_get(pending)
    pending.clear()
    for s, m in fetched:
      for k, one in enumerate(members_lib.per_member(m)):
        check_finite(s, one)
        writer.write(s, 'train', one, member=k if members.vmapped else None)
    if fetched:
      progress.update(fetched[-1][0], {
          k: float(np.mean([m[k] for _, m in fetched]))
          for k in ('loss', run.task.TRAIN_METRIC, 'grad_norm')})

  print(f'Training from step {step} to {config.total_steps}.', flush=True)
  with preemption.Preemption() as preempt:
    while step < config.total_steps:
      batch = next(train_iter)
      pipeline.check_batch(batch, spec)
      state, out = update(state, sharding.to_global(batch, mesh))
      step += 1
      pending.append((step, out))
      if preempt.requested():  # after every step: a grace period is short
        flush()
        ckpt.save(step, state, train_iter.get_state(), config_dict, force=True)
        ckpt.wait()
        print(f'Preempted ({preempt.signal_name}) at step {step}: checkpoint '
              f'saved; run the same command again to resume.', flush=True)
        writer.close()
        return {'preempted': True, 'step': step}
      if step % config.log_every == 0 or step == config.total_steps:
        flush()
      if step % config.eval_every == 0 and step < config.total_steps:
        flush()
        val = evaluate_split('validation')
        _write(writer, step, 'validation', val, members)
        best.update(step, members_lib.mean(val), state,
                    train_iter.get_state(), config_dict)
        progress.restart(step)
      if step % config.checkpoint_every == 0 or step == config.total_steps:
        flush()
        ckpt.save(step, state, train_iter.get_state(), config_dict)
  ckpt.wait()

  # -------------------------------------------------------------- Results ---
  results = {split: evaluate_split(split, with_subsets=True)
             for split in eval_splits}
  best.update(step, members_lib.mean(results['validation']), state,
              train_iter.get_state(), config_dict)
  for split, m in results.items():
    _write(writer, step, split, m, members)
  writer.close()
  best.close()
  ckpt.close()
  summary = {split: members_lib.mean(m) for split, m in results.items()}
  if members.vmapped:
    summary['members'] = [
        {**record, **{split: m[k] for split, m in results.items()}}
        for k, record in enumerate(
            members.records(config.optimizer.learning_rate))]
  summary.update(step=step, num_params=run.num_params(state.params),
                 data=config.data.name, task=run.task.name,
                 fusion=config.model.fusion,
                 best=best.record)
  if jax.process_index() == 0:
    files.write_json(os.path.join(workdir, 'results.json'), summary)
    print(reporting.table({s: summary[s] for s in results}, run.task.TABLE),
          flush=True)
  return summary


def _check_allowed(allow_changed):
  """--allow_changed may name only keys that a resume can take."""
  bad = sorted(set(allow_changed) - schema.OVERRIDABLE)
  if bad:
    raise errors.UserError(
        f'--allow_changed={",".join(bad)}: '
        f'{"these keys" if len(bad) > 1 else "this key"} cannot change on '
        f'resume (it fixes the parameters, the data or the randomness, or '
        f'may change anyway); --allow_changed takes: '
        f'{", ".join(sorted(schema.OVERRIDABLE))}.')


def _resume_point(workdir, abstract, config_dict, allow_changed, start_over):
  """(step, state, data_state, changes) to resume from; all None and [] for
  a fresh run. Reads the workdir, writes nothing but the moves of damaged
  checkpoints."""
  found = os.path.isdir(os.path.join(workdir, 'checkpoints'))
  if jax.process_count() > 1:  # process 0's view, so all open it or none
    found = bool(multihost_utils.broadcast_one_to_all(np.asarray(found)))
  if not found:
    return None, None, None, []
  ckpt = checkpoint_lib.Checkpointer(workdir)
  try:
    return ckpt.restore_latest(abstract, config_dict,
                               allow_changed=allow_changed,
                               start_over=start_over)
  finally:
    ckpt.close()


def _finished(workdir: str, start: int | None, total_steps: int):
  """The saved summary of a run that already reached `total_steps` and wrote
  its results, said so; else None."""
  path = os.path.join(workdir, 'results.json')
  if start != total_steps or not os.path.exists(path):
    return None
  with open(path) as f:
    summary = json.load(f)
  if summary.get('step') != total_steps:
    return None
  print(f'{workdir} is already complete at step {total_steps}; its results '
        f'are in {path} (raise --config.total_steps to train on).', flush=True)
  return {**summary, 'already_complete': True}


def _record_changes(workdir: str, step: int | None, changes):
  """Appends the config changes a resume was allowed to make."""
  if not changes:
    return
  with open(os.path.join(workdir, 'resume_changes.jsonl'), 'a') as f:
    for key, before, now in changes:
      f.write(json.dumps({'step': step, 'key': key, 'before': before,
                          'now': now}) + '\n')
  print(f'Resuming with {", ".join(f"{k}={n!r} (was {b!r})" for k, b, n in changes)}'
        f'; recorded in resume_changes.jsonl.', flush=True)


def _write(writer, step, split, results: list, members):
  """One event per member (named only in a vmapped run)."""
  for k, r in enumerate(results):
    writer.write(step, split, r, member=k if members.vmapped else None)


class _Best:
  """Keeps the checkpoint with the best validation `config.best_metric`."""

  def __init__(self, workdir: str, config):
    self.metric = config.best_metric
    self.mode = config.best_mode
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
      files.write_json(self.path, self.record)

  def close(self):
    self.ckpt.close()
