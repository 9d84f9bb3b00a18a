"""K runs in one compiled program (`config.vmap`): seeds or peak learning rates.

A vmapped run's train state has a member axis in front of every leaf
([K, ...]) and every member sees the same batches. The member axis is
explicit everywhere: `step` and `evaluate` functions made here return
[K, ...] outputs for a run of one member too, so no caller guesses from
array ranks. `vmapped` only says whether files name members.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from mmfusion.runtime import errors


@dataclasses.dataclass(frozen=True)
class Members:
  """The K runs of one program: their seeds and learning-rate scales."""
  seeds: tuple[int, ...]
  lr_scales: tuple[float, ...]  # x the schedule: a learning-rate sweep's value

  @property
  def size(self) -> int:
    return len(self.seeds)

  @property
  def vmapped(self) -> bool:
    return self.size > 1

  def init(self, create):
    """`create(seed, lr_scale) -> state` for every member, stacked [K, ...].

    Not `jax.vmap`: vmapped, flax's orthogonal initialisers (GRU, LSTM) become
    one batched LAPACK QR, which jaxlib splits over XLA:CPU's intra-op thread
    pool from inside a task of that pool; two such QRs at once can leave every
    worker waiting for a free one, and the program never finishes (seen on 2
    cores). `lax.map` keeps each QR unbatched; the states are the same.
    """
    if not self.vmapped:
      return create(self.seeds[0], self.lr_scales[0])
    return jax.lax.map(lambda sl: create(*sl), (
        jnp.asarray(self.seeds), jnp.asarray(self.lr_scales, jnp.float32)))

  def step(self, fn):
    """`fn(state, batch) -> (state, metrics)` over the members' states, one
    batch for all; metrics come out [K] per key."""
    if self.vmapped:
      return jax.vmap(fn, in_axes=(0, None))

    def one(state, batch):
      state, metrics = fn(state, batch)
      return state, jax.tree.map(lambda x: x[None], metrics)
    return one

  def apply(self, fn):
    """`fn(params, batch) -> outputs` over the members' parameters, one batch
    for all: every output [K, ...]."""
    if self.vmapped:
      return jax.vmap(fn, in_axes=(0, None))
    return lambda p, b: jax.tree.map(lambda x: x[None], fn(p, b))

  def params(self, params):
    """Parameters with the member axis [K, ...], for a run of one too."""
    return params if self.vmapped else jax.tree.map(lambda x: x[None], params)

  def records(self, learning_rate: float) -> list[dict]:
    """One {'member', 'seed', 'learning_rate'} per member, for results.json."""
    return [{'member': k, 'seed': int(s), 'learning_rate': float(l * learning_rate)}
            for k, (s, l) in enumerate(zip(self.seeds, self.lr_scales))]


def from_config(config) -> Members:
  """The members `config.vmap` asks for.

  `vmap.key == 'seed'`: seeds config.seed .. config.seed + K - 1. `vmap.key ==
  'optimizer.learning_rate'`: one seed, `vmap.values` as peak learning rates
  (AdamW's update is linear in the learning rate, so a scale is exact).
  """
  k, key = config.vmap.size, config.vmap.key
  if not isinstance(k, int) or k < 1:
    raise errors.UserError(f'vmap.size={k!r} must be a whole number >= 1.')
  if key == 'seed':
    return Members(tuple(range(config.seed, config.seed + k)), (1.0,) * k)
  if key == 'optimizer.learning_rate':
    values = tuple(config.vmap['values'] or ())  # .values is a method
    if len(values) != k:
      raise errors.UserError(
          f'vmap.values has {len(values)} learning rates but vmap.size={k}; '
          f'give exactly {k}.')
    return Members((config.seed,) * k, tuple(
        float(v) / config.optimizer.learning_rate for v in values))
  raise errors.UserError(
      f'vmap.key={key!r} cannot be vmapped; use seed or '
      f'optimizer.learning_rate.')


def per_member(metrics: dict) -> list[dict]:
  """[K]-shaped host metrics -> one float dict per member."""
  k = len(next(iter(metrics.values())))
  return [{name: float(np.asarray(v)[i]) for name, v in metrics.items()}
          for i in range(k)]


def mean(results: list[dict]) -> dict:
  """The mean over members of their metric dicts (`examples` is a count)."""
  out = {k: float(np.mean([r[k] for r in results])) for k in results[0]}
  if 'examples' in out:
    out['examples'] = results[0]['examples']
  return out
