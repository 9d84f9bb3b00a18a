"""Image encoders: [B, H, W, C] -> spatial tokens [B, h*w, D] (or one if pooled).

Integer pixels are scaled by 1/255; float pixels are used as they are.
Legend: B batch, H/W image size, h/w feature-map size, C channels, D width.
"""

import math
from typing import Any, Literal

import flax.linen as nn
import jax.numpy as jnp

from mmfusion.encoders import transformer
from mmfusion.nn import kernels as kernels_lib
from mmfusion.runtime import errors


def to_float_image(x, dtype):
  """Pixels as `dtype`; integer (uint8) pixels are scaled to [0, 1] first."""
  x = jnp.asarray(x)
  if jnp.issubdtype(x.dtype, jnp.integer):
    x = x.astype(jnp.float32) / 255.0
  return x.astype(dtype)


def map_to_tokens(x_BxHxWxC, pool: bool):
  """Feature map -> row-major tokens [B, h*w, C] (mean-pooled to one if asked)."""
  b, h, w, c = x_BxHxWxC.shape
  tokens_BxTxC = x_BxHxWxC.reshape(b, h * w, c)
  if pool:
    tokens_BxTxC = jnp.mean(tokens_BxTxC, axis=1, keepdims=True)
  return tokens_BxTxC, jnp.ones(tokens_BxTxC.shape[:2], jnp.bool_)


class Cnn(nn.Module):
  """LeNet/VGG-like stack (LeCun et al. 1998; Simonyan & Zisserman 2015).

  Per stage: 3x3 conv, ReLU, 2x2 max-pool; then a per-location Dense(features).
  Returns the final feature map's locations as tokens, or one token if `pool`.
  """
  features: int
  channels: tuple[int, ...] = (32, 64)  # one stage per entry
  pool: bool = False  # mean-pool the locations into a single token
  dropout: float = 0.0  # before the output projection
  dtype: Any = jnp.float32
  kernels: kernels_lib.Kernels = kernels_lib.FLAX

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    k = self.kernels
    x = to_float_image(x, self.dtype)
    for c in self.channels:
      x = nn.relu(k.conv(c, (3, 3), dtype=self.dtype)(x))
      x = k.max_pool(x, (2, 2), strides=(2, 2), padding='SAME')  # halves h, w
    x = nn.Dropout(self.dropout, deterministic=not train)(x)
    x = nn.Dense(self.features, dtype=self.dtype)(x)  # [B, h, w, D]
    return map_to_tokens(x, self.pool)


def group_norm(kernels, channels: int, groups: int, dtype):
  """GroupNorm (Wu & He 2018) with the largest group count dividing `channels`."""
  return kernels.group_norm(num_groups=math.gcd(groups, channels), dtype=dtype)


class ResidualBlock(nn.Module):
  """Basic two-conv residual block (He et al. 2016) with GroupNorm."""
  channels: int
  strides: int = 1
  groups: int = 8
  dtype: Any = jnp.float32
  kernels: kernels_lib.Kernels = kernels_lib.FLAX

  @nn.compact
  def __call__(self, x_BxHxWxC):
    k, s = self.kernels, (self.strides, self.strides)
    norm = lambda: group_norm(k, self.channels, self.groups, self.dtype)
    y = k.conv(self.channels, (3, 3), s, use_bias=False, dtype=self.dtype)(
        x_BxHxWxC)
    y = nn.relu(norm()(y))
    y = norm()(k.conv(self.channels, (3, 3), use_bias=False,
                      dtype=self.dtype)(y))
    shortcut = x_BxHxWxC
    if shortcut.shape != y.shape:  # projection shortcut (option B)
      shortcut = norm()(k.conv(self.channels, (1, 1), s, use_bias=False,
                               dtype=self.dtype)(shortcut))
    return nn.relu(y + shortcut)


class ResNet(nn.Module):
  """Residual CNN (He et al. 2016), CIFAR layout, GroupNorm instead of BatchNorm.

  A 3x3 stem, then one stage per `stage_sizes` entry (width doubling and stride
  2 from the second stage), then a per-location Dense(features). Defaults are
  ResNet-20. Returns the final feature map's locations as tokens, or one token
  if `pool`.
  """
  features: int
  stage_sizes: tuple[int, ...] = (3, 3, 3)  # residual blocks per stage
  width: int = 16  # channels of the stem and first stage
  groups: int = 8  # GroupNorm groups (fewer when the width needs it)
  pool: bool = False  # mean-pool the locations into a single token
  dtype: Any = jnp.float32
  kernels: kernels_lib.Kernels = kernels_lib.FLAX

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    k = self.kernels
    x = to_float_image(x, self.dtype)
    x = k.conv(self.width, (3, 3), use_bias=False, dtype=self.dtype)(x)
    x = nn.relu(group_norm(k, self.width, self.groups, self.dtype)(x))
    for i, size in enumerate(self.stage_sizes):
      for j in range(size):
        x = ResidualBlock(self.width * 2**i, 2 if i and not j else 1,
                          self.groups, self.dtype, k)(x)
    x = nn.Dense(self.features, dtype=self.dtype)(x)  # [B, h, w, D]
    return map_to_tokens(x, self.pool)


def patchify(x_BxHxWxC, patch_size: int, features: int, dtype):
  """Non-overlapping patch embedding as a strided conv -> [B, h*w, D]."""
  _, h, w, _ = x_BxHxWxC.shape
  if h < patch_size or w < patch_size:
    raise errors.UserError(
        f'a {h}x{w} input is smaller than one {patch_size}x{patch_size} '
        f'patch; lower patch_size.')
  p = (patch_size, patch_size)
  x = nn.Conv(features, p, strides=p, padding='VALID', dtype=dtype,
              name='patch_embed')(x_BxHxWxC)
  return map_to_tokens(x, pool=False)[0]


class ViT(nn.Module):
  """Vision Transformer (Dosovitskiy et al. 2021): patch tokens out.

  Edge pixels that do not fill a whole patch are dropped. With `class_token`
  the first token is the learned [CLS] token.
  """
  features: int
  patch_size: int = 4  # small, for small images; the paper uses 16 at 224px
  num_layers: int = 2
  num_heads: int = 4
  mlp_dim: int | None = None  # None: 4 x features
  dropout: float = 0.0
  posemb: Literal['learned', 'sincos', 'none'] = 'learned'
  class_token: bool = False
  dtype: Any = jnp.float32
  kernels: kernels_lib.Kernels = kernels_lib.FLAX

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    x = to_float_image(x, self.dtype)
    tokens_BxTxD = patchify(x, self.patch_size, self.features, self.dtype)
    return transformer.TokenTransformer(
        num_layers=self.num_layers, num_heads=self.num_heads,
        mlp_dim=self.mlp_dim, dropout=self.dropout, posemb=self.posemb,
        class_token=self.class_token, dtype=self.dtype,
        kernels=self.kernels)(tokens_BxTxD, train=train)
