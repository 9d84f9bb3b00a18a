"""Put named source tensors into a Flax parameter tree, checked.

A loader renames a checkpoint's tensors to flat Flax paths ('a/b/kernel') and
transposes them to Flax's layouts; `fill` then checks the result against the
parameters the module would initialise: every parameter supplied, nothing
extra, every shape equal. The error names the tensors, so a user holding the
wrong checkpoint sees which ones are missing or unexpected.
"""

import pathlib
from typing import Any, Callable, Mapping, Sequence

import flax
import numpy as np

from mmfusion.runtime import errors

_SHOWN = 6  # tensor names listed in an error before "and N more"
HF_FILES = ('config.json', 'model.safetensors')  # what `save_pretrained` writes


def _listed(names) -> str:
  names = sorted(names)
  more = len(names) - _SHOWN
  return ', '.join(names[:_SHOWN]) + (f' and {more} more' if more > 0 else '')


def flat_names(tree) -> dict[str, Any]:
  """{'a/b/kernel': leaf} of a nested parameter dict."""
  return {'/'.join(k): v for k, v in
          flax.traverse_util.flatten_dict(flax.core.unfreeze(tree)).items()}


def fill(template, tensors: Mapping[str, np.ndarray], *, source: str,
         allow_missing=()):
  """`template`'s tree (arrays or ShapeDtypeStructs) with every leaf taken
  from `tensors` (flat Flax names) and cast to the leaf's dtype.

  Leaves whose name starts with one of `allow_missing` keep the template's
  value (e.g. a new projection the checkpoint cannot hold); `source` names the
  checkpoint in the error.
  """
  want = flat_names(template)
  missing = [n for n in want if n not in tensors
             and not any(n.startswith(p) for p in allow_missing)]
  unexpected = [n for n in tensors if n not in want]
  if missing or unexpected:
    parts = []
    if missing:
      parts.append(f'lacks {len(missing)} tensors the model needs '
                   f'({_listed(missing)})')
    if unexpected:
      parts.append(f'has {len(unexpected)} the model does not use '
                   f'({_listed(unexpected)})')
    raise errors.UserError(
        f'the checkpoint {source} ' + ' and '.join(parts) +
        '; point the encoder at a checkpoint of the same architecture and '
        'size, or change its options to match it.')
  wrong = [f'{n} {tuple(tensors[n].shape)} vs {tuple(want[n].shape)}'
           for n in want if n in tensors
           and tuple(tensors[n].shape) != tuple(want[n].shape)]
  if wrong:
    raise errors.UserError(
        f'the checkpoint {source} has tensors of other shapes than the model '
        f'({_listed(wrong)}, checkpoint vs model); set the encoder options '
        'to the checkpoint\'s sizes.')
  out = {n: (np.asarray(tensors[n], dtype=leaf.dtype) if n in tensors
             else leaf) for n, leaf in want.items()}
  return flax.traverse_util.unflatten_dict(
      {tuple(n.split('/')): v for n, v in out.items()})


def hf_folder(checkpoint: str, files: Sequence[str] = HF_FILES,
              packaged: Mapping[str, Callable[[], pathlib.Path]] = None
              ) -> pathlib.Path:
  """The Hugging Face checkpoint folder `checkpoint` names (a key of
  `packaged`, weights a pip package ships, or a path), checked to hold
  `files`; never downloaded."""
  packaged = packaged or {}
  if checkpoint in packaged:
    path = packaged[checkpoint]()
  else:
    path = pathlib.Path(checkpoint).expanduser()
  if not path.is_dir():
    names = f' or one of: {", ".join(sorted(packaged))}' if packaged else ''
    raise errors.UserError(
        f'the checkpoint folder {checkpoint} does not exist; give a folder '
        f'that save_pretrained wrote{names} (nothing is downloaded).')
  missing = [f for f in files if not (path / f).is_file()]
  if missing:
    raise errors.UserError(
        f'the checkpoint folder {path} lacks {", ".join(missing)}; save the '
        f'model there with save_pretrained (safetensors, the default).')
  return path
