"""Video encoders: frames [B, F, H, W, C] -> tokens [B, T, D].

`video_pool` and `video_transformer` share one image encoder across frames
(time folded into the batch), pool each frame's tokens to one, then mean-pool
over time or run a temporal Transformer. `tubelet` embeds 3D patches directly.
Integer pixels are scaled by 1/255. Legend: B batch, F frames, D width.
"""

from typing import Any, Literal

import flax.linen as nn
import jax.numpy as jnp

from mmfusion.runtime import errors
from mmfusion.nn import kernels as kernels_lib
from mmfusion.nn import layers
from mmfusion.nn import registry
from mmfusion.encoders import image
from mmfusion.encoders import transformer
from mmfusion.encoders import vector

FRAME_ENCODERS = {'cnn': image.Cnn, 'resnet': image.ResNet, 'vit': image.ViT,
                  'mlp': vector.Mlp}


class FrameEncoder(nn.Module):
  """One image encoder applied to every frame -> one token per frame [B, F, D]."""
  features: int
  frame_encoder: str = 'cnn'  # a key of FRAME_ENCODERS
  frame_options: Any = None  # dict of that encoder's options (not features)
  dtype: Any = jnp.float32
  kernels: kernels_lib.Kernels = kernels_lib.FLAX

  @nn.compact
  def __call__(self, video_BxFxHxWxC, *, train: bool = False):
    opts = dict(self.frame_options or {})
    if 'features' in opts:
      raise errors.UserError(
          'frame_options must not set features; the video encoder passes its '
          'own to the frame encoder.')
    encoder = registry.build(
        'frame encoder', self.frame_encoder, FRAME_ENCODERS,
        dict(opts, features=self.features, dtype=self.dtype,
             kernels=self.kernels))
    b, f = video_BxFxHxWxC.shape[:2]
    frames = video_BxFxHxWxC.reshape(b * f, *video_BxFxHxWxC.shape[2:])
    tokens_NxTxD, mask_NxT = encoder(frames, train=train)  # N = B * F
    return layers.masked_mean(tokens_NxTxD, mask_NxT).reshape(b, f, -1)


class VideoPool(nn.Module):
  """Per-frame image encoder + mean over time (late pooling, Karpathy et al. 2014)."""
  features: int
  frame_encoder: Literal['cnn', 'resnet', 'vit', 'mlp'] = 'cnn'
  frame_options: Any = None  # dict of the frame encoder's options
  dtype: Any = jnp.float32
  kernels: kernels_lib.Kernels = kernels_lib.FLAX

  @nn.compact
  def __call__(self, video_BxFxHxWxC, *, train: bool = False):
    frames_BxFxD = FrameEncoder(
        self.features, self.frame_encoder, self.frame_options, self.dtype,
        self.kernels)(
            video_BxFxHxWxC, train=train)
    pooled_Bx1xD = jnp.mean(frames_BxFxD, axis=1, keepdims=True)
    return pooled_Bx1xD, jnp.ones(pooled_Bx1xD.shape[:2], jnp.bool_)


class VideoTransformer(nn.Module):
  """Per-frame encoder + temporal Transformer (ViViT factorised encoder,
  Arnab et al. 2021): one token per frame out."""
  features: int
  frame_encoder: Literal['cnn', 'resnet', 'vit', 'mlp'] = 'cnn'
  frame_options: Any = None  # dict of the frame encoder's options
  num_layers: int = 2
  num_heads: int = 4
  mlp_dim: int | None = None  # None: 4 x features
  dropout: float = 0.0
  posemb: Literal['learned', 'sincos', 'none'] = 'learned'
  class_token: bool = False
  dtype: Any = jnp.float32
  kernels: kernels_lib.Kernels = kernels_lib.FLAX

  @nn.compact
  def __call__(self, video_BxFxHxWxC, *, train: bool = False):
    frames_BxFxD = FrameEncoder(
        self.features, self.frame_encoder, self.frame_options, self.dtype,
        self.kernels)(
            video_BxFxHxWxC, train=train)
    return transformer.TokenTransformer(
        num_layers=self.num_layers, num_heads=self.num_heads,
        mlp_dim=self.mlp_dim, dropout=self.dropout, posemb=self.posemb,
        class_token=self.class_token, dtype=self.dtype,
        kernels=self.kernels)(frames_BxFxD, train=train)


class Tubelet(nn.Module):
  """Tubelet embedding + Transformer (ViViT, Arnab et al. 2021): tubelet tokens out.

  Frames and pixels that do not fill a whole tubelet are dropped.
  """
  features: int
  tubelet_size: int = 2  # frames per tubelet
  patch_size: int = 4  # pixels per tubelet side
  num_layers: int = 2
  num_heads: int = 4
  mlp_dim: int | None = None  # None: 4 x features
  dropout: float = 0.0
  posemb: Literal['learned', 'sincos', 'none'] = 'learned'
  class_token: bool = False
  dtype: Any = jnp.float32
  kernels: kernels_lib.Kernels = kernels_lib.FLAX

  @nn.compact
  def __call__(self, video_BxFxHxWxC, *, train: bool = False):
    b, f, h, w, _ = video_BxFxHxWxC.shape
    t, p = self.tubelet_size, self.patch_size
    if f < t or h < p or w < p:
      raise errors.UserError(
          f'a {f}x{h}x{w} video is smaller than one {t}x{p}x{p} tubelet; '
          f'lower tubelet_size or patch_size.')
    x = image.to_float_image(video_BxFxHxWxC, self.dtype)
    x = nn.Conv(self.features, (t, p, p), strides=(t, p, p), padding='VALID',
                dtype=self.dtype, name='tubelet_embed')(x)  # [B, f', h', w', D]
    tokens_BxTxD = x.reshape(b, -1, self.features)
    return transformer.TokenTransformer(
        num_layers=self.num_layers, num_heads=self.num_heads,
        mlp_dim=self.mlp_dim, dropout=self.dropout, posemb=self.posemb,
        class_token=self.class_token, dtype=self.dtype,
        kernels=self.kernels)(tokens_BxTxD, train=train)
