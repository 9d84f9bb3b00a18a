"""Writing files so that a failure is one sentence and leaves no half file.

`writes(path)` turns an OSError (a full disk, a read-only mount) into a
`UserError` naming the path, why, the space free and what the rerun resumes
from; `write_json` replaces a file atomically (a temporary file, then
`os.replace`), so a crash leaves the old or the new one, never half of one.
"""

import contextlib
import errno
import json
import os
import re
import shutil

from mmfusion.runtime import errors


def _os_error(error: Exception) -> str:
  """The OS's words for a failed write, found in orbax's or TensorStore's
  message (`[os_error_code='28']`), else the error's first line."""
  if isinstance(error, OSError) and error.strerror:
    return error.strerror
  code = re.search(r"os_error_code='?(\d+)", str(error))
  if code:
    return os.strerror(int(code.group(1)))
  return (str(error).strip().splitlines() or [type(error).__name__])[0][:120]


_WRITE_ERRNOS = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EROFS,
                 errno.EIO)
_WRITE_WORDS = ('No space left on device', 'File too large',
                'Disk quota exceeded', 'Read-only file system',
                'os_error_code=')


def is_write_error(error: Exception) -> bool:
  """Whether `error` is the system refusing a write (a full disk, a file
  size limit, a quota, a read-only mount), however a library wrapped it."""
  if isinstance(error, OSError) and error.errno in _WRITE_ERRNOS:
    return True
  return any(w in str(error) for w in _WRITE_WORDS)


def write_error(path: str, error: Exception, *, need_bytes: int = 0,
                what: str = '', then: str = 'run the same command again to '
                'resume from its last complete checkpoint') -> errors.UserError:
  """One sentence for a write under `path` that failed: why, the space free
  and needed, and what to do (`then`, after 'free space and')."""
  free = _free_bytes(path)
  space = f'{free / 2**20:.1f} MiB free' if free is not None else ''
  if need_bytes:
    space += f', about {need_bytes / 2**20:.1f} MiB needed'
  return errors.UserError(
      f'cannot write {what}{path} ({_os_error(error)}'
      f'{"; " + space if space else ""}); free space and {then}.')


def _free_bytes(path: str) -> int | None:
  while path and not os.path.exists(path):
    path = os.path.dirname(path)
  try:
    return shutil.disk_usage(path or '.').free
  except OSError:
    return None


@contextlib.contextmanager
def writes(path: str):
  """An OSError inside becomes one sentence naming `path` and the space."""
  try:
    yield
  except OSError as e:
    raise write_error(e.filename or path, e) from None


def write_json(path: str, obj, indent: int | None = 2):
  """Replaces `path` with `obj` as JSON, atomically."""
  tmp = f'{path}.tmp'
  with writes(path):
    try:
      with open(tmp, 'w') as f:
        json.dump(obj, f, indent=indent)
      os.replace(tmp, path)
    finally:
      if os.path.exists(tmp):
        os.remove(tmp)
