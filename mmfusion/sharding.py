"""The device mesh and where arrays live on it.

One mesh axis, `data`: batches are split along it and parameters are
replicated. The same code runs on one CPU, fake CPU devices, a GPU box or a TPU
pod; multi-host batches are assembled from each process's local part.
"""

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from mmfusion import errors


def make_mesh(num_devices: int = 0) -> Mesh:
  """A `data` mesh over the first `num_devices` devices (0 means all)."""
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


def check_batch_size(batch_size: int, mesh: Mesh):
  """The global batch must split evenly over devices and processes."""
  n = mesh.shape['data']
  if batch_size % n or batch_size % jax.process_count():
    raise errors.UserError(
        f'batch_size={batch_size} does not divide over {n} devices; pass '
        f'--config.batch_size={max(n, batch_size // n * n)} or another '
        f'multiple of {n}.')


def to_global(local_batch, mesh: Mesh):
  """Per-process numpy batch -> global jax.Arrays sharded over `data`."""
  sharding = batch_sharding(mesh)
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)),
      local_batch)
