"""Evaluation over a whole split, with every subset of modalities present.

A model trained on all modalities is also scored with only some of them
present (`present/<m>` set to False for the others), which is how missing-
modality robustness is read off: metric keys `accuracy/image`,
`accuracy/image+text`, ... for every non-empty proper subset (for tasks
that score subsets; contrastive towers do not). The task computes the
metrics on the host from what it gathers of every example.
"""

import itertools

import jax
import numpy as np
from jax.experimental import multihost_utils

from mmfusion import sharding
from mmfusion.data import pipeline


def eval_fn(model, task, members):
  """What `task` gathers of one batch for every member ([K, B, ...] each),
  with the batch's targets and validity [B]."""
  per_example = members.apply(lambda p, b: task.per_example(
      model.apply({'params': p}, b, train=False)[0], b))
  return lambda params, batch: {
      'out': per_example(params, batch),
      'targets': {k: batch[k] for k in task.TARGETS},
      'valid': batch['valid']}


def subsets(modalities):
  """Every non-empty subset of `modalities`, the full set first."""
  ms = sorted(modalities)
  out = [tuple(c) for r in range(len(ms), 0, -1)
         for c in itertools.combinations(ms, r)]
  return out


def only(batch, kept):
  """`batch` with every modality outside `kept` marked absent."""
  batch = dict(batch)
  for key in [k for k in batch if k.startswith('present/')]:
    if key.split('/', 1)[1] not in kept:
      batch[key] = np.zeros_like(batch[key])
  return batch


def _gather(fn, params, source, config, mesh, task, kept_sets):
  """{kept: (out {key: [K, N, ...]}, targets {key: [N, ...]})} over a whole
  split, gathered from every process, padding dropped."""
  outs = {kept: [] for kept in kept_sets}
  per_process = config.batch_size // jax.process_count()
  for local in pipeline.eval_batches(
      source, batch_size=per_process, modalities=config.data.modalities,
      process_index=jax.process_index(), process_count=jax.process_count(),
      targets=task.TARGETS):
    for kept in kept_sets:
      batch = local if kept is None else only(local, kept)
      out = fn(params, sharding.to_global(batch, mesh))
      outs[kept].append(multihost_utils.process_allgather(out, tiled=True))
  gathered = {}
  for kept, parts in outs.items():
    valid_N = np.concatenate([o['valid'] for o in parts]).astype(bool)
    out = {k: np.concatenate([o['out'][k] for o in parts], axis=1)[:, valid_N]
           for k in parts[0]['out']}
    targets = {k: np.concatenate([o['targets'][k] for o in parts])[valid_N]
               for k in parts[0]['targets']}
    gathered[kept] = out, targets
  return gathered


def evaluate(fn, params, source, config, mesh, task, *,
             with_subsets: bool = False) -> list[dict]:
  """One metrics dict per member of `params` over a whole split, gathered
  from every process. `fn` is a jitted `eval_fn`."""
  kept_sets = (subsets(config.data.modalities)
               if with_subsets and task.SUBSETS else [None])
  gathered = _gather(fn, params, source, config, mesh, task, kept_sets)
  results = None
  for i, kept in enumerate(kept_sets):
    out_K, targets = gathered[kept]
    members = [{k: v[j] for k, v in out_K.items()}
               for j in range(len(next(iter(out_K.values()))))]
    if results is None:
      results = [{} for _ in members]
    for r, out in zip(results, members):
      m = task.scores(out, targets, detail=i == 0)
      if i == 0:  # the full set: plain metric names
        r.update(m)
      else:
        r.update({f'{k}/{"+".join(kept)}': v for k, v in m.items()
                  if k != 'examples'})
  return results


def predictions(fn, params, source, config, mesh, task) -> list[dict]:
  """The task's outputs of every example of `source`, one {key: [N, ...]}
  per member, in the split's order, padding dropped: what evaluation scored,
  and what a loaded model's `predict` must match. `fn` is a jitted
  `eval_fn`."""
  out_K, _ = _gather(fn, params, source, config, mesh, task, [None])[None]
  k = len(next(iter(out_K.values())))
  return [jax.device_get(task.outputs_of({key: v[j] for key, v in
                                          out_K.items()}))
          for j in range(k)]
