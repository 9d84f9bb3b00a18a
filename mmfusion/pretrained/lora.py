"""LoRA on attention projections (Hu et al. 2022), for any encoder.

`finetune='lora'` keeps an encoder's own parameters frozen and learns, for
every attention projection kernel W (flax's `query`, `key`, `value`, `out`
of a MultiHeadDotProductAttention), a low-rank update: W + A @ B, with
A [fan_in, r] uniform in +-1/sqrt(fan_in) and B [r, fan_out] zeros, so
training starts at the pretrained function. The factors live outside the
encoder, in the model's `lora_<m>` parameter (one {'a', 'b'} per kernel,
keyed by the kernel's path joined with '.'), and are added to the kernels
as the encoder reads them (`nn.map_variables`), so the encoder's module and
its checkpoint names stay as they are. Scale 1 (PEFT's default alpha = r).
Legend: I fan in, O fan out, R rank.
"""

import math

import flax
import jax
import jax.numpy as jnp

from mmfusion.runtime import errors

PROJECTIONS = ('query', 'key', 'value', 'out')  # flax's attention names
KEEP = 'proj'  # a new projection trains, as under `frozen`


def _fans(path: tuple[str, ...], shape) -> tuple[int, int]:
  """(fan in, fan out) of a projection kernel: q/k/v [I, H, K] take I in;
  `out` [H, K, O] gives O out."""
  if path[-2] == 'out':
    return math.prod(shape[:-1]), shape[-1]
  return shape[0], math.prod(shape[1:])


def targets(params) -> dict[str, tuple[tuple[str, ...], tuple[int, ...]]]:
  """{joined path: (path, kernel shape)} of every attention projection."""
  flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(params))
  return {'.'.join(path): (path, leaf.shape) for path, leaf in flat.items()
          if len(path) >= 2 and path[-1] == 'kernel'
          and path[-2] in PROJECTIONS}


def check(name: str, found: dict):
  if not found:
    raise errors.UserError(
        f'encoder {name!r} has no attention projections for LoRA; use '
        'finetune=frozen or full for it.')


def init_factors(found: dict, rank: int):
  """The factors' initialiser: rng -> {joined path: {'a', 'b'}}."""
  def init(rng):
    out = {}
    for i, (key, (path, shape)) in enumerate(sorted(found.items())):
      fan_in, fan_out = _fans(path, shape)
      bound = 1.0 / math.sqrt(fan_in)
      out[key] = {'a': jax.random.uniform(jax.random.fold_in(rng, i),
                                          (fan_in, rank), jnp.float32,
                                          -bound, bound),
                  'b': jnp.zeros((rank, fan_out), jnp.float32)}
    return out
  return init


def adapted(factors):
  """`trans_in_fn` for nn.map_variables: the encoder's parameters frozen
  (stop_gradient, but for `proj`), each projection kernel plus A @ B."""
  def trans_in(variables):
    flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(variables))
    out = {}
    for path, leaf in flat.items():
      inner = path[1:]  # (collection, ...) -> the encoder's own path
      key = '.'.join(inner)
      if inner[:1] != (KEEP,):
        leaf = jax.lax.stop_gradient(leaf)
      if key in factors:
        f = factors[key]
        leaf = leaf + (f['a'] @ f['b']).reshape(leaf.shape).astype(leaf.dtype)
      out[path] = leaf
    return flax.traverse_util.unflatten_dict(out)
  return trans_in
