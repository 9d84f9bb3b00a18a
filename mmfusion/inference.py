"""A trained model for inference: `load(workdir)` -> `Model`.

  model = mmfusion.load(workdir)  # the best checkpoint
  out = model.predict([{'image': 'cat.npy', 'text': 'a cat', 'age': 3},
                       {'audio': 'meow.wav'}])
  out.labels, out.probabilities, out.embeddings['fused']  # classification
  out.outputs, out.rows()  # what the run's task predicts, for any task

An example is a dict with one entry per modality it has, given raw, as the
`manifest` builder reads it (file paths, arrays, strings, number columns;
`mmfusion.data.examples` says what each modality takes). Preprocessing is
the dataset's (`data_info.json`, written by training), so a raw example
becomes exactly the arrays evaluation fed the model. A vmapped
run (config.vmap.size = K > 1) loads all members by default and predicts the
mean of their outputs; `member=k` picks one. What is predicted is the task's
(`tasks`): class probabilities (classification), label probabilities
(multilabel), values in the targets' units (regression), or the two towers'
unit embeddings (contrastive, `embeddings['a']` and `['b']`). The model runs on one
device with the kernels that the saved `model.kernels` resolves to here,
jitted, in padded batches of at most `config.batch_size`.

Shape legend: N examples, B batch, C classes, D width, K members.
"""

import dataclasses
import os
from typing import Mapping

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from mmfusion import build
from mmfusion import checkpoint as checkpoint_lib
from mmfusion.data import examples as examples_lib
from mmfusion.data import info as info_lib
from mmfusion.runtime import errors


# -------------------------------------------------------------- Workdir ---
def _steps(workdir: str, subdir: str) -> list[int]:
  """Saved steps under `workdir/subdir`, without creating the folder."""
  if not os.path.isdir(os.path.join(workdir, subdir)):
    return []
  ckpt = checkpoint_lib.Checkpointer(workdir, subdir=subdir)
  try:
    return ckpt.all_steps()
  finally:
    ckpt.close()


def locate(workdir: str, checkpoint='best') -> tuple[str, int]:
  """(subdir, step) of `checkpoint` in `workdir`: 'best' (best/, the best
  validation step), 'latest' (checkpoints/) or a step number (either)."""
  if not os.path.isdir(workdir):
    raise errors.UserError(f'there is no workdir {workdir!r}; pass the '
                           f'--workdir of a trained run.')
  saved = _steps(workdir, 'checkpoints')
  best = _steps(workdir, 'best')
  if not saved and not best:
    raise errors.UserError(
        f'the workdir {workdir!r} holds no checkpoint; train it first '
        f'(python -m mmfusion.main --workdir={workdir} --config=...).')
  listed = ', '.join(map(str, sorted(set(saved) | set(best))))
  if checkpoint == 'best':
    if not best:
      raise errors.UserError(
          f'the workdir {workdir!r} has no best checkpoint yet (it is kept '
          f'at validation); pass checkpoint latest or a step ({listed}).')
    return 'best', best[-1]
  if checkpoint == 'latest':
    if not saved:
      return 'best', best[-1]
    return 'checkpoints', saved[-1]
  try:
    step = int(checkpoint)
  except (TypeError, ValueError):
    raise errors.UserError(
        f'checkpoint {checkpoint!r} is not best, latest or a step number; '
        f'pass one of those.') from None
  if step in saved:
    return 'checkpoints', step
  if step in best:
    return 'best', step
  raise errors.UserError(
      f'the workdir {workdir!r} has no checkpoint of step {step}; its steps '
      f'are {listed} (or pass best or latest).')


def _tuples(tree):
  """Lists (JSON's tuples) back to tuples, as the config files write them."""
  if isinstance(tree, dict):
    return {k: _tuples(v) for k, v in tree.items()}
  if isinstance(tree, (list, tuple)):
    return tuple(_tuples(v) for v in tree)
  return tree


def saved_config(workdir: str, subdir: str, step: int,
                 kernels: str | None = None) -> ml_collections.ConfigDict:
  """The config the checkpoint was saved with, ready for `build.run` on one
  device; `kernels` replaces its `model.kernels` when given."""
  ckpt = checkpoint_lib.Checkpointer(workdir, subdir=subdir)
  try:
    config = ml_collections.ConfigDict(_tuples(ckpt.saved_config(step)))
  finally:
    ckpt.close()
  fill_later_keys(config)
  config.num_devices = 1  # inference runs on one device, whatever trained
  if kernels is not None:
    config.model.kernels = kernels
  return config


# Keys added after a workdir may have been written, with the value that
# means what such a run did. Training-only keys: a loaded model never uses
# them, but `build.run` checks that every key is there.
LATER_KEYS = {('data', 'augment'): {}}


def fill_later_keys(config: ml_collections.ConfigDict):
  """Adds to a saved config the LATER_KEYS it predates (in place)."""
  for (section, key), value in LATER_KEYS.items():
    if key not in config[section]:
      config[section][key] = value


def _data_info(workdir: str) -> info_lib.DataInfo | None:
  """The saved DataInfo; None (the dataset is opened) if training wrote none."""
  if os.path.exists(os.path.join(workdir, info_lib.FILE)):
    return info_lib.DataInfo.read(workdir)
  return None


def _restore_params(workdir: str, subdir: str, step: int, run):
  """Every member's parameters ([K, ...] leaves) on the first local device."""
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  abstract = jax.tree.map(
      lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=device),
      run.abstract_state())
  ckpt = checkpoint_lib.Checkpointer(workdir, subdir=subdir)
  try:
    state, _ = ckpt.restore(step, abstract)
  except Exception as e:  # pylint: disable=broad-except
    reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
    raise errors.UserError(
        f'cannot read step {step} in {ckpt.directory} ({reason}); pass '
        f'another checkpoint.') from None
  finally:
    ckpt.close()
  return run.members.params(state.params)


# ---------------------------------------------------------------- Model ---
@dataclasses.dataclass(frozen=True)
class Predictions:
  """Outputs for N examples, in the order they were given."""
  task: object  # the run's task (`tasks`): what the outputs mean
  outputs: dict  # the task's, [N, ...] each; the members' mean for an ensemble
  # 'fused' (absent for late fusion), each modality, and for contrastive the
  # towers 'a' and 'b': [N, D], or [N, K, D] for an ensemble (each member's).
  embeddings: dict
  ids: list

  @property
  def classes(self) -> tuple[str, ...]:
    return tuple(self.task.data.classes)

  @property
  def probabilities(self) -> np.ndarray:
    """[N, C] class (or label) probabilities."""
    return self.outputs['probabilities']

  @property
  def predicted(self) -> np.ndarray:
    """[N] class ids of the most probable class."""
    return self.probabilities.argmax(-1)

  @property
  def labels(self) -> list[str]:
    """The predicted class names."""
    return [self.classes[i] for i in self.predicted]

  def rows(self) -> list[dict]:
    """One JSON-ready record per example: {'id', 'prediction', ...} as the
    task writes it (classification: and 'probabilities' by class)."""
    return self.task.rows(self.outputs, self.ids)


EMBEDDING = 'embedding/'


def forward(module, task, params, batch, *, ensemble: bool) -> dict:
  """The task's outputs and the embeddings of one batch: a pure function of
  the parameters ([K, ...] leaves when `ensemble`), jitted or exported."""
  def one(p):
    out, aux = module.apply({'params': p}, batch, train=False)
    return {**task.outputs(out),
            **{k: v for k, v in aux.items() if k.startswith(EMBEDDING)}}
  if not ensemble:
    return one(params)
  out = jax.vmap(one)(params)
  embeddings = {k: jnp.moveaxis(out.pop(k), 0, 1)  # [B, K, D]
                for k in list(out) if k.startswith(EMBEDDING)}
  return {**task.mean_outputs(out), **embeddings}


def _bucket(n: int, limit: int) -> int:
  """The padded batch of n examples: a power of two up to `limit`, so a few
  compiled sizes serve any n."""
  return min(limit, 1 << max(n - 1, 0).bit_length())


class Model:
  """A trained model: its config, module, parameters and preprocessing.

  `config` is the saved experiment, `task` its task, `module` the flax
  module the task built (a MultimodalModel),
  `params` its parameters (with a leading member axis [K, ...] when
  `ensemble`), `data` the dataset's DataInfo (classes, input shapes,
  preprocessing), `step` and `member` what was loaded, `batch_size` the
  most examples it runs at once (config.batch_size; may be changed).
  """

  def __init__(self, config, task, module, params, data, *, step: int,
               member: int | None, ensemble: bool):
    self.config, self.task, self.module = config, task, module
    self.params, self.data = params, data
    self.step, self.member, self.ensemble = step, member, ensemble
    self.classes = tuple(data.classes)
    self.batch_size = int(config.batch_size)
    self._apply = jax.jit(self.forward)

  def forward(self, params, batch) -> dict:
    """`forward` of this model: outputs of one batch in the batch contract."""
    return forward(self.module, self.task, params, batch,
                   ensemble=self.ensemble)

  def input_spec(self, batch_size: int) -> dict:
    """{key: (shape, dtype)} of the batches `apply_batch` runs: each modality
    and `present/<m>`, and what else the task reads as an input (a
    generation prompt); no target is needed."""
    return self.data.batch_spec(batch_size, targets=self.task.model_inputs)

  def _checked(self, batch: Mapping) -> dict:
    """`batch` as numpy arrays of the model's inputs, `present/<m>` True
    where it is not given; one sentence for a batch that does not fit."""
    spec = self.input_spec(1)
    extra = sorted(set(batch) - set(spec) - set(info_lib.TARGETS) -
                   {'valid', 'id'})
    missing = [m for m in self.data.modalities if m not in batch]
    if extra or missing:
      has = (f'has {", ".join(extra)}' if extra else
             f'has no {", ".join(missing)}')
      raise errors.UserError(
          f'the batch {has}, but the model takes '
          f'{", ".join(self.data.modalities)} and present/<m>; pass exactly '
          f'those keys (and targets, valid or id if you like).')
    n = len(batch[self.data.modalities[0]])
    out = {}
    for key, (shape, dtype) in spec.items():
      if key not in batch and not key.startswith('present/'):
        raise errors.UserError(
            f'the batch has no {key!r}, but the model takes it as '
            f'{dtype}{["B", *shape[1:]]}; pass it.')
      x = np.asarray(batch.get(key, np.ones(n, np.bool_)))
      if x.shape != (n,) + shape[1:] or not np.can_cast(x.dtype, dtype,
                                                         'same_kind'):
        raise errors.UserError(
            f'batch {key!r} is {x.dtype}{list(x.shape)} but the model takes '
            f'{dtype}{["B", *shape[1:]]}; fix that array.')
      out[key] = x.astype(dtype)
    return out

  def apply_batch(self, batch: Mapping) -> dict:
    """Outputs (numpy) for a batch in the pipeline's contract, of any size:
    the task's (classification: `probabilities` [B, C]) and `embedding/<m>`,
    `embedding/fused` ([B, D], or [B, K, D] for an ensemble). Runs in
    padded batches."""
    batch = self._checked(batch)
    n = len(batch[f'present/{self.data.modalities[0]}'])
    if n == 0:
      raise errors.UserError('the batch is empty; pass at least one example.')
    size = _bucket(n, self.batch_size)
    outs = []
    for start in range(0, n, size):
      chunk = {k: v[start:start + size] for k, v in batch.items()}
      real = len(chunk['present/' + self.data.modalities[0]])
      chunk = {k: np.concatenate([v, np.repeat(v[-1:], size - real, 0)])
               for k, v in chunk.items()}  # padded with its last example
      out = jax.device_get(self._apply(self.params, chunk))
      outs.append({k: np.asarray(v)[:real] for k, v in out.items()})
    return {k: np.concatenate([o[k] for o in outs]) for k in outs[0]}

  def predictions(self, outputs: dict, ids) -> Predictions:
    """`apply_batch`'s outputs as Predictions of the examples `ids`."""
    return Predictions(
        task=self.task,
        outputs={k: v for k, v in outputs.items()
                 if not k.startswith(EMBEDDING)},
        embeddings={k[len(EMBEDDING):]: v for k, v in outputs.items()
                    if k.startswith(EMBEDDING)}, ids=list(ids))

  def predict(self, examples, *, root: str = '') -> Predictions:
    """The task's outputs and the embeddings of raw `examples` (a list of
    dicts, see the module docstring); relative paths are taken from `root`."""
    if isinstance(examples, Mapping):
      raise errors.UserError(
          'predict takes a list of examples (dicts), not one dict; wrap it '
          'in a list, or pass batched arrays to apply_batch.')
    examples = list(examples)
    batch = examples_lib.preprocess_all(self.data, examples, root)
    ids = [ex.get('id', i) for i, ex in enumerate(examples)]
    return self.predictions(self.apply_batch(batch), ids)


def load(workdir: str, checkpoint='best', member: int | None = None, *,
         kernels: str | None = None) -> Model:
  """The model of `workdir` at `checkpoint` ('best', 'latest' or a step).

  `member`: one member k of a vmapped run; None gives every member, and
  `predict` their mean probabilities (a run of one member: that member).
  `kernels` ('flax', 'xla_cpu', 'auto') replaces the saved `model.kernels`.
  """
  subdir, step = locate(workdir, checkpoint)
  config = saved_config(workdir, subdir, step, kernels)
  run = build.run(config, data=_data_info(workdir))
  size = run.members.size
  if member is not None and not 0 <= member < size:
    raise errors.UserError(
        f'member={member} is not a member of the run in {workdir!r}, which '
        f'has {size} (config.vmap.size); pass 0 .. {size - 1}, or none for '
        f'the mean of all.')
  params_K = _restore_params(workdir, subdir, step, run)
  ensemble = member is None and size > 1
  params = params_K if ensemble else jax.tree.map(
      lambda x: x[member or 0], params_K)
  return Model(config, run.task, run.model, params, run.data, step=step,
               member=member, ensemble=ensemble)

