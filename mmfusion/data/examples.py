"""Raw examples, as the `manifest` builder reads them, to a model's inputs.

An example is a dict with one entry per modality it has: `image` a file path
(.npy, .pgm/.ppm, .png ...) or an array (uint8, or float in [0, 1]; [H, W] or
[H, W, C]); `audio` a .wav/.flac/.npy path or a float waveform at the
training sample rate (cut or zero-padded); `video` a clip file (sampled to
the training frame count over its whole length) or a uint8 [T, H, W, C]
array; `text` a string (tokenized as training did) or token ids; `tabular`
an array, or the manifest's number columns by name (`'age': 20`); any other
modality an array of its training shape; for a generation model, `prompt` a
string (a language tag, say). A modality the example leaves out (or gives as
None or '') is absent (`present/<m>` False), as in training. `id`, `label`,
`split` and the targets (`labels`, a regression's target columns) are
ignored, and any other key is an error.

`preprocess(data, example)` turns one into {modality: array, 'present/<m>':
bool} with the dataset's preprocessing (`DataInfo`), or raises `BadExample`
listing every problem; `preprocess_all` makes a batch and names every bad
example in one UserError.
"""

import math
import os
from typing import Mapping

import numpy as np

from mmfusion.data import info as info_lib
from mmfusion.data import manifest
from mmfusion.data import tokenizer
from mmfusion.data import video
from mmfusion.runtime import errors

IGNORED = ('id', 'label', 'labels', 'split')  # keys of a row that are no input


class BadExample(Exception):
  """Problems of one example, as short phrases."""


def _empty(value) -> bool:
  return value is None or isinstance(value, str) and not value.strip()


def _path(text: str, root: str) -> str:
  path = os.path.expanduser(text.strip())
  return path if os.path.isabs(path) else os.path.join(root, path)


def _columns(data: info_lib.DataInfo) -> list[str]:
  """The manifest number columns that make up `tabular`, if any."""
  return list(data.preprocessing.get('tabular', {}).get('columns') or [])


def unknown_keys(data: info_lib.DataInfo, keys) -> list[str]:
  """The keys (columns) of `keys` that are no input of the model."""
  targets = data.targets.get('target', {}).get('names', [])
  known = (set(data.modalities) | set(_columns(data)) | set(IGNORED) |
           set(targets) | set(info_lib.TEXT_TARGETS) & set(data.targets))
  return [k for k in keys if k not in known]


def inputs(data: info_lib.DataInfo) -> str:
  """What an example may have, for error messages: 'image, text, age'."""
  return ', '.join(list(data.modalities) + _columns(data))


def _numbers(example, columns) -> np.ndarray | None:
  """float32 [F] of the number columns; None when all are left out."""
  cells = [example.get(k) for k in columns]
  if all(_empty(c) for c in cells):
    return None
  values, problems = [], []
  for k, cell in zip(columns, cells):
    try:
      values.append(float(str(cell).strip()))
      if not math.isfinite(values[-1]):
        raise ValueError
    except ValueError:
      problems.append(f'{k} {"" if cell is None else str(cell)!r} is not a '
                      f'finite number')
  if problems:
    raise BadExample('; '.join(problems))
  return np.asarray(values, np.float32)


def _cast(x: np.ndarray, shape, dtype) -> np.ndarray:
  """`x` as `dtype`, if it has exactly `shape` and a numeric kind that fits."""
  if x.shape != tuple(shape):
    raise BadExample(f'shape {list(x.shape)} is not {list(shape)}')
  fits = x.dtype.kind in 'biu' or x.dtype.kind == dtype.kind == 'f'
  if x.dtype.kind not in 'biuf' or dtype.kind in 'biu' and not fits:
    raise BadExample(f'{x.dtype} values are not {dtype}')
  return x.astype(dtype)


def _input(value, shape, dtype, how: dict, root: str) -> np.ndarray:
  """One modality's array from its raw value, as the builders make it.

  `how` is the dataset's preprocessing of the modality; uint8 [H, W, C]
  inputs are images, uint8 [T, H, W, C] videos (a clip file is sampled to T
  frames over its whole length).
  """
  is_image = len(shape) == 3 and dtype == np.uint8
  if isinstance(value, str) and len(shape) == 4 and dtype == np.uint8:
    x = video.read_video(_path(value, root), frames=shape[0],
                         size=shape[1:3], crop=how.get('crop', 'center'))
    if x.shape != tuple(shape):  # RGB frames for a model of grey ones
      raise BadExample(f'is a clip of {list(x.shape)}, but the model takes '
                       f'{list(shape)}')
    return x
  if isinstance(value, str):
    if 'tokenizer' in how:
      return tokenizer.of_preprocessing(how).encode([value.strip()],
                                                    shape[0])[0]
    if 'sample_rate' in how:
      return manifest.read_audio(_path(value, root), how['sample_rate'],
                                 shape[0])
    if is_image:
      return manifest.read_image(_path(value, root), shape)
    raise BadExample(f'is text, but the model takes {dtype}{list(shape)}')
  x = np.asarray(value)
  if 'sample_rate' in how:
    if x.ndim != 1 or x.dtype.kind not in 'biuf':
      raise BadExample(f'a waveform must be 1-D numbers, not {x.dtype}'
                       f'{list(x.shape)}')
    return manifest.fit_length(x.astype(np.float32), shape[0])
  if is_image:
    return manifest.image_from_array(x, shape)
  return _cast(x, shape, dtype)


def _prompt(value, data: info_lib.DataInfo) -> np.ndarray:
  """int32 [P] ids of a generation prompt (e.g. a language tag such as
  '<fr>'), tokenized as the dataset's prompts were."""
  length = data.targets['prompt']['length']
  if _empty(value):
    return np.zeros(length, np.int32)
  if not isinstance(value, str):
    raise BadExample(f'prompt {_shown(value)} is not text')
  tok = data.text_tokenizer('prompt')
  ids = tok.encode([value.strip()], 4 * len(value) + length)[0]
  unk = getattr(tok, 'unk_id', None)
  if unk is not None and unk in ids:
    raise BadExample(f'prompt {value!r} has a token the vocabulary lacks; '
                     f'use a prompt of the training data (such as a '
                     f'language tag it has)')
  if ids[length:].any():
    raise BadExample(f'prompt {value!r} is longer than the {length} tokens '
                     f'the model was trained with; use a prompt of the '
                     f'training data (such as a language tag it has)')
  return ids[:length]


def _shown(value) -> str:
  return f'{value!r}' if isinstance(value, (str, int, float)) else (
      '(array)')


def preprocess(data: info_lib.DataInfo, example: Mapping,
               root: str = '') -> dict:
  """One raw example -> {modality: array, 'present/<m>': bool}; BadExample
  lists every problem. Relative paths are taken from `root`."""
  if not isinstance(example, Mapping):
    raise BadExample(f'not a dict of inputs but a {type(example).__name__}')
  problems = [f'{k!r} is not an input of the model (it takes '
              f'{inputs(data)})' for k in unknown_keys(data, example)]
  out = {}
  for m in data.modalities:
    shape, dtype = tuple(data.inputs[m][0]), np.dtype(data.inputs[m][1])
    value = example.get(m)
    out[m], out[f'present/{m}'] = np.zeros(shape, dtype), np.False_
    try:
      if m == 'tabular' and _columns(data) and m not in example:
        value = _numbers(example, _columns(data))
      if _empty(value):
        continue
      out[m] = _input(value, shape, dtype, data.preprocessing.get(m, {}),
                      root)
      out[f'present/{m}'] = np.True_
    except BadExample as e:
      problems.append(str(e) if m == 'tabular' and m not in example else
                      f'{m} {_shown(value)}: {e}')
    except manifest.MediaError as e:
      problems.append(f'{m} {_shown(value)}: {e}')
  if 'prompt' in data.targets:
    try:
      out['prompt'] = _prompt(example.get('prompt'), data)
    except BadExample as e:
      problems.append(str(e))
  if problems:
    raise BadExample('; '.join(problems))
  return out


def collate(examples: list[dict]) -> dict:
  """Preprocessed examples -> one batch dict of stacked arrays."""
  return {k: np.stack([ex[k] for ex in examples]) for k in examples[0]}


def preprocess_all(data: info_lib.DataInfo, examples, root: str = '') -> dict:
  """A batch of raw `examples`; one UserError names every bad one."""
  good, bad = [], []
  for i, example in enumerate(examples):
    try:
      good.append(preprocess(data, example, root))
    except BadExample as e:
      bad.append(f'example {i} ({e})')
  if bad:
    raise errors.UserError(
        f'{len(bad)} of the {len(bad) + len(good)} examples cannot be read: '
        f'{"; ".join(bad)}; fix them (see mmfusion.data.examples for the '
        f'input format).')
  if not good:
    raise errors.UserError('there are no examples to predict; pass a list of '
                           'dicts, one per example.')
  return collate(good)
