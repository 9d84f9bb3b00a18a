"""Test-time robustness of a trained run: its task's primary metric (accuracy
for classification) under each corruption of
`mmfusion.data.transforms` at severity 0 (clean) .. 5, read from the run's
latest checkpoint.

Each corruption is applied to one modality at a time and, with two or more
modalities, to all of them at once (target `all`). A run trained with
`config.vmap` holds K members ([K, ...] parameters); they are scored together
by one vmapped evaluation step.
"""

import zlib

import jax
import numpy as np

from mmfusion import build, evaluate
from mmfusion import checkpoint as checkpoint_lib
from mmfusion.data import pipeline, transforms
from mmfusion.runtime import errors

SEVERITIES = tuple(range(6))


def available_kinds() -> tuple[str, ...]:
  """The test-time corruptions of `mmfusion.data.transforms`."""
  return tuple(transforms.KINDS)


def restore_params(run, run_dir: str):
  """(step, params) of the latest checkpoint of `run_dir`, through the
  project's checkpointer, laid out as `run` (a `build.Run`) builds them."""
  ckpt = checkpoint_lib.Checkpointer(run_dir)
  try:
    step = ckpt.latest_step()
    if step is None:
      raise errors.UserError(
          f'{run_dir} has no checkpoint to evaluate; re-run the ablation so '
          f'the run trains again.')
    state, _ = ckpt.restore(step, run.abstract_state())
  finally:
    ckpt.close()
  return step, state.params


def targets(modalities) -> list[str]:
  """What a corruption hits: each modality alone, then `all` of them."""
  ms = sorted(modalities)
  return ms + (['all'] if len(ms) > 1 else [])


def _salt(*parts) -> int:
  return zlib.crc32('/'.join(map(str, parts)).encode())


def corruption_curves(config, run_dir: str, *, kinds, seed: int = 0) -> dict:
  """The test split's primary metric of the run's task (accuracy for
  classification) under `kinds` x targets x severities.

  Returns {'step', 'severities', 'members': [{kind: {target: [acc_s]}}],
  'skipped': {kind/target: why}}; one entry of 'members' per member of the
  run (K of a vmapped one). Severity 0 is the clean test set.
  """
  run = build.run(config)
  step, params = restore_params(run, run_dir)
  source = run.builder.as_data_source(split='test')
  task = run.task
  batches = list(pipeline.eval_batches(
      source, batch_size=config.batch_size, modalities=config.data.modalities,
      targets=task.TARGETS))
  fn = jax.jit(evaluate.eval_fn(run.model, task, run.members))

  def accuracy(corrupted_batches):
    """The task's primary metric per member [K] over the valid examples."""
    outs = [jax.device_get(fn(params, b)) for b in corrupted_batches]
    valid_N = np.concatenate([o['valid'] for o in outs]).astype(bool)
    out_K = {k: np.concatenate([o['out'][k] for o in outs], 1)[:, valid_N]
             for k in outs[0]['out']}
    targets = {k: np.concatenate([o['targets'][k] for o in outs])[valid_N]
               for k in outs[0]['targets']}
    return np.asarray([task.scores({k: v[j] for k, v in out_K.items()},
                                   targets, detail=False)[task.PRIMARY]
                       for j in range(run.members.size)])

  clean = accuracy(batches)
  k = run.members.size
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
