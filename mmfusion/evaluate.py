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


def eval_fn(model, members):
  """Logits of one batch for every member, [K, B, C], with the labels and
  validity [B] they belong to."""
  logits = members.apply(lambda p, b: model.apply({'params': p}, b,
                                                  train=False)[0])
  return lambda params, batch: {'logits': logits(params, batch),
                                'label': batch['label'],
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


def evaluate(fn, params, source, config, mesh, *,
             with_subsets: bool = False) -> list[dict]:
  """One metrics dict per member of `params` over a whole split, gathered
  from every process. `fn` is a jitted `eval_fn`: logits [K, B, C]."""
  kept_sets = subsets(config.data.modalities) if with_subsets else [None]
  outs = {kept: [] for kept in kept_sets}
  per_process = config.batch_size // jax.process_count()
  for local in pipeline.eval_batches(
      source, batch_size=per_process, modalities=config.data.modalities,
      process_index=jax.process_index(), process_count=jax.process_count()):
    for kept in kept_sets:
      batch = local if kept is None else only(local, kept)
      out = fn(params, sharding.to_global(batch, mesh))
      outs[kept].append(multihost_utils.process_allgather(out, tiled=True))
  results = None
  for i, kept in enumerate(kept_sets):
    logits_KxNxC = np.concatenate([o['logits'] for o in outs[kept]], axis=1)
    label_N, valid_N = (np.concatenate([o[k] for o in outs[kept]])
                        for k in ('label', 'valid'))
    valid_N = valid_N.astype(bool)
    if results is None:
      results = [{} for _ in logits_KxNxC]
    for r, logits_NxC in zip(results, logits_KxNxC):
      m = metrics.classification(logits_NxC[valid_N], label_N[valid_N])
      if i == 0:  # the full set: plain metric names
        r.update(m)
      else:
        r.update({f'{k}/{"+".join(kept)}': v for k, v in m.items()
                  if k != 'examples'})
  return results


def predictions(fn, params, source, config, mesh) -> np.ndarray:
  """Class probabilities [K, N, C] of every example of `source`, in its order,
  as `evaluate` scores them: the softmax of `fn`'s logits (a jitted
  `eval_fn`), padding dropped. What a loaded model's `predict` must match."""
  outs = []
  per_process = config.batch_size // jax.process_count()
  for local in pipeline.eval_batches(
      source, batch_size=per_process, modalities=config.data.modalities,
      process_index=jax.process_index(), process_count=jax.process_count()):
    out = fn(params, sharding.to_global(local, mesh))
    outs.append(multihost_utils.process_allgather(out, tiled=True))
  logits_KxNxC = np.concatenate([o['logits'] for o in outs], axis=1)
  valid_N = np.concatenate([o['valid'] for o in outs]).astype(bool)
  log_probs = metrics.log_softmax(logits_KxNxC[:, valid_N].astype(np.float64))
  return np.exp(log_probs).astype(np.float32)
