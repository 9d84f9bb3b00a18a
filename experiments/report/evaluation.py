"""Test-time robustness of a trained run: accuracy under each corruption of
`mmfusion.data.transforms` at severity 0 (clean) .. 5, read from the run's
latest checkpoint.

Each corruption is applied to one modality at a time and, with two or more
modalities, to all of them at once (target `all`). A run trained with
`config.vmap` holds K members ([K, ...] parameters); they are scored together
by one vmapped evaluation step.
"""

import os
import zlib

import jax
import numpy as np
import orbax.checkpoint as ocp

from mmfusion import checkpoint as checkpoint_lib
from mmfusion import errors, evaluate, models
from mmfusion.data import pipeline

try:  # another engineer's module; without it only missing modalities count
  from mmfusion.data import transforms
except ImportError:  # pragma: no cover - depends on the tree's state
  transforms = None

SEVERITIES = tuple(range(6))


def available_kinds() -> tuple[str, ...]:
  """The test-time corruptions this tree offers (none without transforms)."""
  return tuple(getattr(transforms, 'KINDS', ())) if transforms else ()


def restore_params(run_dir: str):
  """(step, params as numpy arrays) of the latest checkpoint of `run_dir`."""
  ckpt = checkpoint_lib.Checkpointer(run_dir)
  step = ckpt.latest_step()
  ckpt.close()
  if step is None:
    raise errors.UserError(
        f'{run_dir} has no checkpoint to evaluate; re-run the ablation so the '
        f'run trains again.')
  item = os.path.join(os.path.abspath(run_dir), 'checkpoints', str(step),
                      'state')
  with ocp.PyTreeCheckpointer() as reader:
    tree = reader.metadata(item).item_metadata.tree
    as_numpy = jax.tree.map(
        lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
    state = reader.restore(item, args=ocp.args.PyTreeRestore(
        restore_args=as_numpy))
  return step, state['params']


def targets(modalities) -> list[str]:
  """What a corruption hits: each modality alone, then `all` of them."""
  ms = sorted(modalities)
  return ms + (['all'] if len(ms) > 1 else [])


def _salt(*parts) -> int:
  return zlib.crc32('/'.join(map(str, parts)).encode())


def corruption_curves(config, run_dir: str, *, kinds, num_members: int = 0,
                      seed: int = 0) -> dict:
  """Test accuracy of a run under `kinds` x targets x severities.

  Returns {'step', 'severities', 'members': [{kind: {target: [acc_s]}}],
  'skipped': {kind/target: why}}; one entry of 'members' per member of a
  vmapped run (`num_members` = K), else one. Severity 0 is the clean test set.
  """
  step, params = restore_params(run_dir)
  params = jax.device_put(params)
  builder = pipeline.get_builder(config.data)
  num_classes = builder.info.features['label'].num_classes
  model = models.from_config(config.model, num_classes)
  source = builder.as_data_source(split='test')
  batches = list(pipeline.eval_batches(
      source, batch_size=config.batch_size, modalities=config.data.modalities))
  fn = lambda p, b: evaluate.eval_step(p, b, model=model)['logits']
  if num_members:
    fn = jax.vmap(fn, in_axes=(0, None))
  fn = jax.jit(fn)

  def accuracy(corrupted_batches):
    """Accuracy per member [K] (or [1]) over the valid examples."""
    hits, total = 0, 0
    for b in corrupted_batches:
      logits = np.asarray(fn(params, b))
      logits = logits if num_members else logits[None]
      valid = np.asarray(b['valid'], bool)
      hits = hits + ((logits.argmax(-1) == b['label']) & valid).sum(-1)
      total += valid.sum()
    return hits / total

  clean = accuracy(batches)
  k = num_members or 1
  curves = [{} for _ in range(k)]
  skipped = {}
  for kind in kinds:
    for target in targets(config.data.modalities):
      mods = sorted(config.data.modalities) if target == 'all' else [target]
      try:  # does this kind apply to this modality's arrays at all?
        transforms.corrupt(batches[0], kind, 1, mods,
                           transforms.batch_rng(seed, 0, _salt(kind, target)))
      except errors.UserError as e:
        skipped[f'{kind}/{target}'] = str(e)
        continue
      accs = [clean]
      for s in SEVERITIES[1:]:
        accs.append(accuracy(
            transforms.corrupt(b, kind, s, mods, transforms.batch_rng(
                seed, i, _salt(kind, target, s)))
            for i, b in enumerate(batches)))
      for member in range(k):
        curves[member].setdefault(kind, {})[target] = [
            float(a[member]) for a in accs]
  return {'step': int(step), 'severities': list(SEVERITIES),
          'clean': [float(c) for c in clean], 'members': curves,
          'skipped': skipped}
