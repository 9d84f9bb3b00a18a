"""EfficientNet-Lite image encoder (Tan & Le 2019, "EfficientNet: Rethinking
Model Scaling for Convolutional Neural Networks"; the Lite variants of the
TensorFlow TPU repo's efficientnet/lite: ReLU6, no squeeze-excitation, stem
and head not scaled), built to take its ImageNet weights
(`mmfusion.pretrained.efficientnet`).

The family by `(width, depth, image_size)`, as in the TF reference
(`efficientnet_lite_builder.efficientnet_lite_params`):

  lite0  1.0  1.0  224        lite3  1.2  1.4  280
  lite1  1.0  1.1  240        lite4  1.4  1.8  300
  lite2  1.1  1.2  260

`width` scales every block's channels (rounded to multiples of 8), `depth` the
repeats of all stages but the first and last; the 32-channel stem and the
1280-channel head stay fixed. Convolutions pad as TF's 'SAME' (flax's: the
odd pixel of padding goes at the bottom/right), which is what the weights
were trained with.

BatchNorm is frozen: each one is held as the per-channel affine its running
statistics make of it in inference mode, `x * scale + bias` with `scale =
gamma / sqrt(var + eps)` and `bias = beta - mean * scale`, folded by the
loader. The repo keeps no mutable `batch_stats`, and running statistics kept
as parameters behind stop_gradient would still be moved by decoupled weight
decay; the folded pair is an ordinary trainable affine that fine-tunes like
BN's gamma and beta with the statistics fixed. From scratch (random init) the
network has no normalisation, so load the weights.

Legend: B batch, H/W image size, h/w feature-map size, C channels, T tokens,
D features.
"""

import dataclasses
import math
from typing import Any, Literal

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmfusion.encoders import image
from mmfusion.nn import kernels as kernels_lib
from mmfusion.runtime import errors

LITE = {  # name -> EfficientNetLite options of the TF reference's variants
    'efficientnet-lite0': dict(width=1.0, depth=1.0, image_size=224),
    'efficientnet-lite1': dict(width=1.0, depth=1.1, image_size=240),
    'efficientnet-lite2': dict(width=1.1, depth=1.2, image_size=260),
    'efficientnet-lite3': dict(width=1.2, depth=1.4, image_size=280),
    'efficientnet-lite4': dict(width=1.4, depth=1.8, image_size=300),
}
# The TF Lite models' inception-style input normalisation (efficientnet/lite/
# efficientnet_lite_builder.py: MEAN_RGB = 127, STDDEV_RGB = 128 on 0..255
# pixels), here on [0, 1] pixels. Not torchvision's ImageNet mean/std, which
# the B0-B7 models use.
MEAN_RGB = 127.0 / 255.0
STDDEV_RGB = 128.0 / 255.0
STEM_WIDTH = 32
HEAD_WIDTH = 1280
# EfficientNet-B0's stages (Tan & Le 2019, table 1), which Lite keeps:
# (repeats, kernel, stride, expansion, output channels).
_STAGES = ((1, 3, 1, 1, 16), (2, 3, 2, 6, 24), (2, 5, 2, 6, 40),
           (3, 3, 2, 6, 80), (3, 5, 1, 6, 112), (4, 5, 2, 6, 192),
           (1, 3, 1, 6, 320))


@dataclasses.dataclass(frozen=True)
class Block:
  """One MBConv block's shape."""
  features: int
  kernel_size: int
  strides: int
  expand: int


def round_channels(channels: int, width: float, divisor: int = 8) -> int:
  """`channels * width` to the nearest multiple of `divisor`, never more than
  10% below it (the TF reference's `round_filters`)."""
  scaled = channels * width
  rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
  return rounded + divisor if rounded < 0.9 * scaled else rounded


def blocks(width: float = 1.0, depth: float = 1.0) -> list[Block]:
  """Every block of the variant, in order; the first and last stages keep
  their repeats (Lite's fixed stem and head)."""
  out = []
  for i, (repeats, k, s, e, c) in enumerate(_STAGES):
    if 0 < i < len(_STAGES) - 1:
      repeats = math.ceil(depth * repeats)
    out += [Block(round_channels(c, width), k, s if j == 0 else 1, e)
            for j in range(repeats)]
  return out


def preprocess(images_BxHxWxC, image_size: int):
  """Images (uint8, or float in [0, 1]; 1 or 3 channels) as the network's
  float32 input: RGB, resized to `image_size` (bilinear, antialiased when
  shrinking), normalised with `MEAN_RGB` and `STDDEV_RGB`."""
  x = image.to_float_image(images_BxHxWxC, jnp.float32)
  if x.ndim != 4 or x.shape[-1] not in (1, 3):
    raise errors.UserError(
        f'EfficientNetLite takes images [B, H, W, C] with C = 1 or 3, got '
        f'shape {x.shape}; pass greyscale or RGB images.')
  if x.shape[-1] == 1:
    x = jnp.repeat(x, 3, axis=-1)
  b, h, w, _ = x.shape
  if (h, w) != (image_size, image_size):
    x = jax.image.resize(x, (b, image_size, image_size, 3), 'bilinear')
  return (x - MEAN_RGB) / STDDEV_RGB


class FrozenBatchNorm(nn.Module):
  """Inference-mode BatchNorm folded to `x * scale + bias` per channel (see
  the module docstring); float32 parameters."""
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x_BxHxWxC):
    c = x_BxHxWxC.shape[-1]
    scale = self.param('scale', nn.initializers.ones_init(), (c,), jnp.float32)
    bias = self.param('bias', nn.initializers.zeros_init(), (c,), jnp.float32)
    x, scale, bias = nn.dtypes.promote_dtype(x_BxHxWxC, scale, bias,
                                             dtype=self.dtype)
    return x * scale + bias


class MBConv(nn.Module):
  """Inverted residual block (Sandler et al. 2018, MobileNetV2), no SE: 1x1
  expansion, k x k depthwise conv (the stride), 1x1 linear projection, and
  the identity added when the shape is kept. Submodule names are the
  checkpoint's (`_expand_conv` -> `expand_conv`, `_bn0` -> `bn0`, ...)."""
  block: Block
  dtype: Any = jnp.float32
  kernels: kernels_lib.Kernels = kernels_lib.FLAX

  @nn.compact
  def __call__(self, x_BxHxWxC):
    k, b, dt = self.kernels, self.block, self.dtype
    c = x_BxHxWxC.shape[-1] * b.expand
    y = x_BxHxWxC
    if b.expand != 1:
      y = k.conv(c, (1, 1), use_bias=False, dtype=dt, name='expand_conv')(y)
      y = jax.nn.relu6(FrozenBatchNorm(dt, name='bn0')(y))
    y = k.depthwise_conv(c, (b.kernel_size,) * 2, b.strides, padding='SAME',
                         use_bias=False, dtype=dt,
                         name='depthwise_conv')(y)  # [B, h, w, C * expand]
    y = jax.nn.relu6(FrozenBatchNorm(dt, name='bn1')(y))
    y = k.conv(b.features, (1, 1), use_bias=False, dtype=dt,
               name='project_conv')(y)
    y = FrozenBatchNorm(dt, name='bn2')(y)
    if b.strides == 1 and x_BxHxWxC.shape[-1] == b.features:
      y = y + x_BxHxWxC
    return y


class EfficientNetLite(nn.Module):
  """EfficientNet-Lite (see the module docstring) as an encoder: images ->
  the head's 1280-channel features as one pooled token or h*w grid tokens
  (7x7 at the variant's own image size), then a Dense(features) named `proj`
  unless `features` is 1280. No classifier; defaults are lite0."""
  features: int
  width: float = 1.0  # channel multiplier of the blocks (stem, head fixed)
  depth: float = 1.0  # repeat multiplier of the middle stages
  image_size: int = 224  # images are resized to this square first
  tokens: Literal['pooled', 'grid'] = 'pooled'  # one mean token, or h*w
  dtype: Any = jnp.float32
  kernels: kernels_lib.Kernels = kernels_lib.FLAX

  @nn.compact
  def __call__(self, images_BxHxWxC, *, train: bool = False):
    del train  # frozen BatchNorm and no dropout: the same in both modes
    if self.tokens not in ('pooled', 'grid'):
      raise errors.UserError(
          f'EfficientNetLite tokens must be pooled or grid, got '
          f'{self.tokens!r}; choose one of those.')
    k, dt = self.kernels, self.dtype
    x = preprocess(images_BxHxWxC, self.image_size).astype(dt)
    x = k.conv(STEM_WIDTH, (3, 3), 2, use_bias=False, dtype=dt,
               name='conv_stem')(x)
    x = jax.nn.relu6(FrozenBatchNorm(dt, name='bn0')(x))
    for i, block in enumerate(blocks(self.width, self.depth)):
      x = MBConv(block, dt, k, name=f'blocks_{i}')(x)
    x = k.conv(HEAD_WIDTH, (1, 1), use_bias=False, dtype=dt,
               name='conv_head')(x)
    x = jax.nn.relu6(FrozenBatchNorm(dt, name='bn1')(x))  # [B, h, w, 1280]
    tokens_BxTxC, mask_BxT = image.map_to_tokens(x, self.tokens == 'pooled')
    if self.features != HEAD_WIDTH:
      tokens_BxTxC = nn.Dense(self.features, dtype=dt, name='proj')(
          tokens_BxTxC)
    return tokens_BxTxC, mask_BxT
