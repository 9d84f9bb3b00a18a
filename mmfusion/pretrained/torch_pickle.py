"""Read a PyTorch state dict (`torch.save` file) into NumPy arrays, no torch.

Both of torch.save's formats:

  legacy  (`_use_new_zipfile_serialization=False`, torch < 1.6) five pickles
          back to back: magic number, protocol version, system info, the
          object (its storages as persistent ids), the storage keys; then
          each storage's raw bytes after an int64 element count, in key order.
  zip     (the default since torch 1.6) `<archive>/data.pkl` holds the object
          and `<archive>/data/<key>` each storage's raw bytes.

Unpickling runs code, so `find_class` resolves only the names a state dict
needs (OrderedDict, the tensor rebuild functions, the storage types) and
refuses any other with a UserError before anything is built: a checkpoint
from a stranger cannot run its own code here. Tensors come back C-contiguous
in torch's logical shape (a strided view is copied out of its storage).
Legend: N elements.
"""

import collections
import os
import pickle
import struct
import zipfile

import ml_dtypes
import numpy as np

from mmfusion.runtime import errors

_MAGIC = 0x1950A86A20F9469CFC6C  # torch.serialization.MAGIC_NUMBER
_PROTOCOL = 1001  # torch.serialization.PROTOCOL_VERSION
_STORAGES = {  # torch.<name> -> element dtype (little-endian unless told)
    'DoubleStorage': np.float64, 'FloatStorage': np.float32,
    'HalfStorage': np.float16, 'BFloat16Storage': ml_dtypes.bfloat16,
    'LongStorage': np.int64, 'IntStorage': np.int32, 'ShortStorage': np.int16,
    'CharStorage': np.int8, 'ByteStorage': np.uint8, 'BoolStorage': np.bool_,
    'UntypedStorage': np.uint8}


class _StorageType:
  """What `torch.FloatStorage` etc. unpickle to: just the element dtype."""

  def __init__(self, name: str):
    self.name, self.dtype = name, np.dtype(_STORAGES[name])


class _Storage:
  """One storage: its dtype, element count and (once read) its bytes."""

  def __init__(self, dtype, numel: int):
    self.dtype, self.numel, self.data = dtype, numel, None


class _Tensor:
  """A tensor as `_rebuild_tensor_v2` describes it, built once data is in."""

  def __init__(self, storage, offset, size, stride, *_):
    self.storage, self.offset = storage, int(offset)
    self.size, self.stride = tuple(size), tuple(stride)

  def array(self, source: str) -> np.ndarray:
    s = self.storage
    if not isinstance(s, _Storage) or s.data is None:
      raise errors.UserError(
          f'the checkpoint {source} has a tensor without stored data; the '
          'file is damaged, save it again.')
    native = s.dtype.newbyteorder('=')
    if 0 in self.size:
      return np.zeros(self.size, native)
    last = self.offset + sum((n - 1) * st
                             for n, st in zip(self.size, self.stride))
    if (len(self.size) != len(self.stride) or self.offset < 0 or
        min(self.size + self.stride, default=0) < 0 or last >= s.numel):
      raise errors.UserError(
          f'the checkpoint {source} has a tensor that reaches past its '
          'storage; the file is damaged, save it again.')
    flat_N = np.frombuffer(s.data, s.dtype, count=s.numel)
    if not self.size:  # as_strided reads shape () as "keep the input's"
      return flat_N[self.offset:self.offset + 1].reshape(()).astype(native)
    view = np.lib.stride_tricks.as_strided(
        flat_N[self.offset:], self.size,
        tuple(st * s.dtype.itemsize for st in self.stride), writeable=False)
    return np.array(view, dtype=native, order='C')


def _rebuild_parameter(data, *_):
  return data  # an nn.Parameter saved as such: its tensor


_ALLOWED = {('collections', 'OrderedDict'): collections.OrderedDict,
            ('torch._utils', '_rebuild_tensor_v2'): _Tensor,
            ('torch._utils', '_rebuild_parameter'): _rebuild_parameter}


class _Unpickler(pickle.Unpickler):
  """Resolves only `_ALLOWED` names and torch storage types; storages come
  back as `_Storage`s keyed like torch's (one per key, shared by views)."""

  def __init__(self, file, source: str, zip_format: bool):
    super().__init__(file)
    self.source, self.zip_format, self.storages = source, zip_format, {}

  def find_class(self, module, name):
    if module == 'torch' and name in _STORAGES:
      return _StorageType(name)
    if (module, name) in _ALLOWED:
      return _ALLOWED[(module, name)]
    raise errors.UserError(
        f'the checkpoint {self.source} needs the Python object {module}.'
        f'{name} to unpickle, which this reader does not run (it reads only '
        'tensors); save the model\'s state_dict() instead of the model.')

  def persistent_load(self, pid):
    # zip: (tag, type, key, location, numel); legacy adds view metadata.
    if not (isinstance(pid, tuple) and pid and pid[0] == 'storage' and
            len(pid) == (5 if self.zip_format else 6) and
            isinstance(pid[1], _StorageType)):
      raise errors.UserError(
          f'the checkpoint {self.source} refers to something other than a '
          'tensor storage; save the model\'s state_dict() and load that.')
    storage_type, key, numel = pid[1], str(pid[2]), int(pid[4])
    if key not in self.storages:
      self.storages[key] = _Storage(storage_type.dtype, numel)
    if not self.zip_format and pid[5] is not None:
      raise errors.UserError(
          f'the checkpoint {self.source} holds storage views, from a torch '
          'older than 0.4; load and save it again with a newer torch.')
    return self.storages[key]


def _tensors(obj, source: str, prefix: str = '') -> dict[str, np.ndarray]:
  """name -> array of a (nested) dict of tensors; other values are dropped."""
  if not isinstance(obj, dict):
    raise errors.UserError(
        f'the checkpoint {source} holds a {type(obj).__name__}, not a dict '
        'of tensors; save the model\'s state_dict().')
  out = {}
  for k, v in obj.items():
    if isinstance(v, _Tensor):
      out[prefix + str(k)] = v.array(source)
    elif isinstance(v, dict):
      out.update(_tensors(v, source, f'{prefix}{k}.'))
  return out


def _read_legacy(f, source: str) -> dict[str, np.ndarray]:
  head = []
  for _ in range(3):  # magic, protocol, system info: plain values
    head.append(_Unpickler(f, source, zip_format=False).load())
  magic, protocol, info = head
  if magic != _MAGIC or protocol != _PROTOCOL:
    raise errors.UserError(
        f'{source} is not a torch.save file (its header is not torch\'s); '
        'point at a .pth written by torch.save.')
  byteorder = '<' if info.get('little_endian', True) else '>'
  unpickler = _Unpickler(f, source, zip_format=False)
  obj = unpickler.load()
  keys = _Unpickler(f, source, zip_format=False).load()
  for key in keys:
    s = unpickler.storages[str(key)]
    s.dtype = s.dtype.newbyteorder(byteorder)
    (count,) = struct.unpack(byteorder + 'q', f.read(8))
    s.data = f.read(count * s.dtype.itemsize)
    if count != s.numel or len(s.data) != count * s.dtype.itemsize:
      raise errors.UserError(
          f'the checkpoint {source} ends inside its tensor data; the file is '
          'truncated, copy or save it again.')
  return _tensors(obj, source)


def _read_zip(path: str, source: str) -> dict[str, np.ndarray]:
  with zipfile.ZipFile(path) as z:
    pkl = [n for n in z.namelist() if n.endswith('/data.pkl')]
    if len(pkl) != 1:
      raise errors.UserError(
          f'{source} is a zip file but not one torch.save wrote (no single '
          'data.pkl); point at a .pth written by torch.save.')
    root = pkl[0][:-len('data.pkl')]
    names = set(z.namelist())
    order = (z.read(root + 'byteorder').decode().strip()
             if root + 'byteorder' in names else 'little')
    with z.open(pkl[0]) as f:
      unpickler = _Unpickler(f, source, zip_format=True)
      obj = unpickler.load()
    for key, s in unpickler.storages.items():
      s.dtype = s.dtype.newbyteorder('<' if order == 'little' else '>')
      s.data = z.read(f'{root}data/{key}')
      if len(s.data) < s.numel * s.dtype.itemsize:
        raise errors.UserError(
            f'the checkpoint {source} has a storage shorter than its tensors; '
            'the file is damaged, save it again.')
  return _tensors(obj, source)


def read(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """The tensors of the state dict that torch.save wrote to `path`, by name
  (nested dicts joined with '.'; values that are not tensors dropped)."""
  path, source = os.fspath(path), repr(os.fspath(path))
  if not os.path.isfile(path):
    raise errors.UserError(f'there is no checkpoint file {source}; point at '
                           'an existing .pth file.')
  try:
    if zipfile.is_zipfile(path):
      return _read_zip(path, source)
    with open(path, 'rb') as f:
      return _read_legacy(f, source)
  except (pickle.UnpicklingError, EOFError, ValueError, KeyError,
          AttributeError, TypeError, struct.error, zipfile.BadZipFile) as e:
    raise errors.UserError(
        f'{source} is not a readable torch.save file ({type(e).__name__}: '
        f'{e}); point at a .pth written by torch.save.') from None
