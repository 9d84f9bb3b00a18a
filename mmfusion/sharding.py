"""The device mesh, where arrays live on it, and multi-host start-up.

One mesh axis, `data`. Batches are split along it. Parameters and
optimizer state are replicated (data parallel), or, with `fsdp`, every array of
at least `fsdp_min_size` elements is split along `data` on its largest axis
that divides evenly (FSDP / ZeRO-3 style): XLA gathers it where a layer needs
it. The rule is applied to the abstract state at creation, so the state is born
sharded (`jax.jit(init, out_shardings=...)`). The same code runs on one CPU,
fake CPU devices, a GPU box or a TPU pod (started by
`runtime/distributed.py`).
"""

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from mmfusion.runtime import errors


def make_mesh(num_devices: int = 0) -> Mesh:
  """A one-axis (`data`) mesh over the first `num_devices` devices (0: all)."""
  available = jax.device_count()
  n = num_devices or available
  if n > available:
    raise errors.UserError(
        f'num_devices={n} but only {available} devices are visible; pass '
        f'--config.num_devices={available} or fewer (0 uses all).')
  return jax.make_mesh((n,), ('data',), devices=jax.devices()[:n],
                       axis_types=(AxisType.Auto,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over `data`; other axes whole."""
  return NamedSharding(mesh, P('data'))


def fsdp_spec(shape, data_size: int, min_size: int) -> P:
  """Split the largest axis that `data_size` divides, if the array is big."""
  if data_size == 1 or int(np.prod(shape, dtype=np.int64)) < min_size:
    return P()
  for axis in sorted(range(len(shape)), key=lambda a: -shape[a]):
    if shape[axis] % data_size == 0:
      return P(*[None] * axis, 'data')
  return P()


def state_shardings(abstract_state, mesh: Mesh, *, fsdp: bool = False,
                    fsdp_min_size: int = 2**14):
  """A NamedSharding for every leaf of `abstract_state` (a ShapeDtypeStruct tree)."""
  def rule(x):
    if not fsdp:
      return replicated(mesh)
    return NamedSharding(mesh, fsdp_spec(x.shape, mesh.shape['data'],
                                         fsdp_min_size))
  return jax.tree.map(rule, abstract_state)


def check_batch_size(batch_size: int, mesh: Mesh):
  """The global batch must split evenly over devices and processes."""
  n = mesh.shape['data']
  if batch_size % n or batch_size % jax.process_count():
    raise errors.UserError(
        f'batch_size={batch_size} does not divide over {n} data-parallel '
        f'devices; pass --config.batch_size={max(n, batch_size // n * n)} or '
        f'another multiple of {n}.')


def to_global(local_batch, mesh: Mesh):
  """Per-process numpy batch -> global jax.Arrays sharded over `data`."""
  sharding = batch_sharding(mesh)
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)),
      local_batch)
