"""Evaluation over a whole split, with every subset of modalities present.

A model trained on all modalities is also scored with only some of them
present (`present/<m>` set to False for the others), which is how missing-
modality robustness is read off: metric keys `accuracy/image`,
`accuracy/image+text`, ... for every non-empty proper subset.
"""

import itertools

import jax
import numpy as np
from jax.experimental import multihost_utils

from mmfusion import metrics, sharding
from mmfusion.data import pipeline


def eval_step(params, batch, *, model):
  """Logits of one batch, with the labels and validity they belong to."""
  logits_BxC, _ = model.apply({'params': params}, batch, train=False)
  return {'logits': logits_BxC, 'label': batch['label'], 'valid': batch['valid']}


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


def evaluate(eval_fn, params, source, config, mesh, *,
             with_subsets: bool = False):
  """Metrics of `params` over a whole split, gathered from every process.

  A dict, or one dict per member when `eval_fn` is vmapped over members.
  """
  kept_sets = subsets(config.data.modalities) if with_subsets else [None]
  outs = {kept: [] for kept in kept_sets}
  per_process = config.batch_size // jax.process_count()
  for local in pipeline.eval_batches(
      source, batch_size=per_process, modalities=config.data.modalities,
      process_index=jax.process_index(), process_count=jax.process_count()):
    for kept in kept_sets:
      batch = local if kept is None else only(local, kept)
      out = eval_fn(params, sharding.to_global(batch, mesh))
      outs[kept].append(multihost_utils.process_allgather(out, tiled=True))
  members = outs[kept_sets[0]][0]['logits'].ndim == 3  # vmapped: [K, B, C]
  results = [{} for _ in range(
      outs[kept_sets[0]][0]['logits'].shape[0] if members else 1)]
  for i, kept in enumerate(kept_sets):
    cat = {k: np.concatenate([o[k] for o in outs[kept]], axis=-1 if k != 'logits'
                             else -2) for k in outs[kept][0]}
    valid = cat['valid'].astype(bool)
    logits = cat['logits'] if members else cat['logits'][None]
    for r, logits_NxC in zip(results, logits):
      m = metrics.classification(logits_NxC[valid], cat['label'][valid])
      if i == 0:  # the full set: plain metric names
        r.update(m)
      else:
        r.update({f'{k}/{"+".join(kept)}': v for k, v in m.items()
                  if k != 'examples'})
  return results if members else results[0]
