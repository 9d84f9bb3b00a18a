"""One way to build a run: `build.run(config)`.

Everything a run needs, made from its config in one place and used by
training, `mmfusion.cost`, the ablation reports, the benchmarks and
`mmfusion.load`:

  config -> checked once (`check_config`)
         -> data builder -> DataInfo (targets, input shapes, preprocessing)
         -> task (`tasks`) -> its model (kernels resolved), optimizer,
            members (config.vmap)
         -> mesh, abstract train state and its shardings -> `Run.init_state`
"""

import dataclasses

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from mmfusion import fusion as fusion_lib
from mmfusion import members as members_lib
from mmfusion import models, pretrained, schema, sharding, tasks
from mmfusion.data import augment
from mmfusion.data import info as info_lib
from mmfusion.data import pipeline
from mmfusion.runtime import errors



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
  schedule = optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=opt.learning_rate,
      warmup_steps=opt.warmup_steps,
      decay_steps=max(config.total_steps, opt.warmup_steps + 1),
      end_value=opt.learning_rate * opt.final_lr_fraction)
  tx = optax.adamw(schedule, b1=opt.b1, b2=opt.b2,
                   weight_decay=opt.weight_decay)
  if opt.grad_clip_norm:
    tx = optax.chain(optax.clip_by_global_norm(opt.grad_clip_norm), tx)
  return _per_encoder(tx, _encoder_configs(config.model))


def _encoder_configs(model_config) -> dict:
  """modality -> encoder config, the early fusion's shared one as 'early'."""
  return {**{m: dict(c) for m, c in model_config.encoders.items()},
          'early': dict(model_config.early_encoder)}


def _scale_by_factors(factors_of) -> optax.GradientTransformation:
  """Updates times a per-leaf factor, `factors_of(params)`: a per-part
  learning rate, as Adam's update is linear in it."""
  def update(updates, state, params):
    return jax.tree.map(jnp.multiply, updates, factors_of(params)), state
  return optax.GradientTransformation(lambda _: optax.EmptyState(), update)


def _per_encoder(tx, encoders) -> optax.GradientTransformation:
  """`tx` on what trains; a frozen encoder's parameters get no update and
  no optimizer state (`optax.multi_transform` with `set_to_zero`), and an
  encoder's `lr_scale` scales its updates. Unchanged without either."""
  if any(c.get('finetune', 'full') in ('frozen', 'lora')
         for c in encoders.values()):
    tx = optax.multi_transform(
        {'train': tx, 'frozen': optax.set_to_zero()},
        lambda params: pretrained.labels(params, encoders))
  if any(float(c.get('lr_scale', 1.0)) != 1.0 or
         float(c.get('layer_decay', 1.0)) != 1.0 for c in encoders.values()):
    tx = optax.chain(tx, _scale_by_factors(
        lambda params: pretrained.lr_factors(params, encoders)))
  return tx


def create_train_state(model, tx, example_batch, seed,
                       lr_scale=1.0) -> TrainState:
  init_rng, train_rng = jax.random.split(jax.random.PRNGKey(seed))
  params = model.init({'params': init_rng}, example_batch, train=False)['params']
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    opt_state=tx.init(params), rng=train_rng,
                    lr_scale=jnp.asarray(lr_scale, jnp.float32))


def check_config(config):
  """Fails in one sentence on anything in `config` that no run could use:
  each key's type and range (`schema`), then what spans keys; everything
  after it trusts the config. Returns the task, not yet bound to data."""
  schema.check(config)
  models.check_config(config.model)
  task = tasks.make(config.task)
  task.check_fusion(config.model.fusion,
                    fusion_lib.get_fusion(config.model.fusion).stage)
  members_lib.from_config(config)
  stray = sorted(set(config.data.modality_dropout) - set(config.data.modalities))
  if stray:
    raise errors.UserError(
        f'data.modality_dropout names {", ".join(stray)}, which is not in '
        f'data.modalities {tuple(config.data.modalities)}; drop it or add '
        f'the modality.')
  if config.batch_size % jax.process_count():
    raise errors.UserError(
        f'batch_size={config.batch_size} does not divide over '
        f'{jax.process_count()} processes; pass a multiple of '
        f'{jax.process_count()}.')
  accum = config.grad_accum_steps
  per_process = config.batch_size // jax.process_count()
  if per_process % accum:
    raise errors.UserError(
        f'grad_accum_steps={accum} does not divide the per-process batch of '
        f'{per_process}; pick a divisor.')
  return task


def check_best(config, task):
  """best_metric must be a metric the task reports, best_mode its way up."""
  direction = task.direction(config.best_metric)
  if direction is None:
    names = [m for m in task.METRICS if task.direction(m)]
    raise errors.UserError(
        f'best_metric={config.best_metric} is not a metric that task '
        f'{task.name!r} reports on {config.data.name}; use one of '
        f'{", ".join(names)}.')
  if config.best_mode != direction:
    raise errors.UserError(
        f'best_mode={config.best_mode} keeps the worst {config.best_metric}; '
        f'use best_mode={direction}.')


def check_data(config, train_examples: int):
  """What the config asks of the data: a batch the training split can fill."""
  if config.batch_size > train_examples:
    raise errors.UserError(
        f'batch_size={config.batch_size} is larger than the '
        f'{train_examples} training examples of {config.data.name}; pass '
        f'--config.batch_size={train_examples} or less.')
  augment.check(config.data.augment, config.data.modalities)


@dataclasses.dataclass
class Run:
  """A built run: what the loop, cost, reports, benchmarks and load share."""
  config: ml_collections.ConfigDict
  data: info_lib.DataInfo
  task: tasks.base.Task
  model: object  # the flax module the task builds (models.MultimodalModel)
  tx: optax.GradientTransformation
  members: members_lib.Members
  mesh: jax.sharding.Mesh
  builder: object = None  # the TFDS builder; None when built from DataInfo

  @property
  def per_process_batch(self) -> int:
    return self.config.batch_size // jax.process_count()

  def batch_spec(self, batch_size: int | None = None) -> dict:
    """{key: (shape, dtype)} of a batch (default: one process's batch)."""
    return self.data.batch_spec(batch_size or self.per_process_batch,
                                self.task.TARGETS)

  def abstract_batch(self, batch_size: int | None = None) -> dict:
    return {k: jax.ShapeDtypeStruct(shape, dtype)
            for k, (shape, dtype) in self.batch_spec(batch_size).items()}

  def example_batch(self) -> dict:
    """A one-example batch of zeros, what parameters are initialised on."""
    return {k: np.zeros((1,) + shape[1:], dtype)
            for k, (shape, dtype) in self.batch_spec(1).items()}

  def init(self) -> TrainState:
    """Every member's fresh train state ([K, ...] leaves when vmapped)."""
    example = self.example_batch()
    return self.members.init(lambda seed, scale: create_train_state(
        self.model, self.tx, example, seed, scale))

  def abstract_state(self) -> TrainState:
    return jax.eval_shape(self.init)

  def state_shardings(self, abstract=None):
    return sharding.state_shardings(
        abstract or self.abstract_state(), self.mesh, fsdp=self.config.fsdp,
        fsdp_min_size=self.config.fsdp_min_size)

  def sharded_abstract_state(self):
    """ShapeDtypeStructs with shardings: what a checkpoint restores into."""
    abstract = self.abstract_state()
    return jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
        abstract, self.state_shardings(abstract))

  def init_state(self) -> TrainState:
    """The fresh state, born sharded over the mesh, with every encoder that
    names a checkpoint loaded from it (on the host, after the jit: the
    weights never become constants of a compiled program)."""
    state = jax.jit(self.init, out_shardings=self.state_shardings())()
    encoders = _encoder_configs(self.config.model)
    if not any(c.get('checkpoint') for c in encoders.values()):
      return state
    return state.replace(params=pretrained.load_into(
        state.params, encoders,
        members=self.members.size if self.members.vmapped else 0))

  def num_params(self, params) -> int:
    """Parameters of one member."""
    return sum(int(x.size) for x in jax.tree.leaves(params)) // self.members.size


def run(config, *, data: info_lib.DataInfo | None = None) -> Run:
  """Checks `config` and builds its run. With `data` (a saved DataInfo) the
  dataset is not opened: what `mmfusion.load` does with a workdir."""
  task = check_config(config)
  builder = None
  if data is None:
    builder = pipeline.get_builder(config.data)
    pipeline.check_modalities(builder, config.data.modalities)
    # Statistics are read off the train split, and a subword vocabulary is
    # learned from it when the dataset is built.
    if task.stats or info_lib.learns_vocabulary(builder):
      pipeline.prepare(builder)
    data = info_lib.from_builder(builder, config.data, stats=task.stats)
  mesh = sharding.make_mesh(config.num_devices)
  sharding.check_batch_size(config.batch_size, mesh)
  task = tasks.bind(task, data, mesh)
  check_best(config, task)
  return Run(config=config, data=data, task=task, model=task.model(
      config.model),
             tx=make_optimizer(config), members=members_lib.from_config(config),
             mesh=mesh, builder=builder)
