"""Hugging Face ViT and CLIP image towers (Dosovitskiy et al. 2021, "An Image
is Worth 16x16 Words"; Radford et al. 2021, "Learning Transferable Visual
Models From Natural Language Supervision").

A native Flax port of HF's `ViTModel` and `CLIPVisionModel`, whose parameters
`mmfusion.pretrained.hf_vit` fills from a checkpoint. Images (uint8, or float
in [0, 1]; [B, H, W, C] with C = 1 or 3) are resized to `image_size` (square:
other aspect ratios are squashed, so centre-crop first to match CLIP's
processor) and normalised per channel with `mean` and `std`, inside the
module. Then: a strided patch conv, the [CLS] token in front, learned
positions, CLIP's `pre_norm` LayerNorm, N pre-LN layers [LN -> attention ->
residual; LN -> Dense -> activation -> Dense -> residual], and a final
LayerNorm on every token. For ViT that is HF's `layernorm` (its
last_hidden_state); CLIP's `post_layernorm`, which HF applies to the [CLS]
state only, here normalises every token as open_clip does, so token 0 is
CLIP's pooled output exactly (`pool`: only that token).
Legend: B batch, H/W image size, C channels, h/w patch grid, T tokens
(1 + h*w), E hidden width, D features, M mlp width.
"""

import functools
from typing import Any, Literal

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmfusion.encoders import image
from mmfusion.nn import kernels as kernels_lib
from mmfusion.runtime import errors

# Per-channel normalisation on [0, 1] pixels: HF's ViTImageProcessor default,
# and the OpenAI CLIP processor's ImageNet-like statistics.
VIT_MEAN = VIT_STD = (0.5, 0.5, 0.5)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
RESIZES = ('nearest', 'bilinear', 'bicubic', 'lanczos3')  # jax.image.resize's
ACTIVATIONS = {
    'gelu': functools.partial(nn.gelu, approximate=False),  # HF's "gelu": erf
    'quick_gelu': lambda x: x * nn.sigmoid(1.702 * x),  # CLIP's
}
INIT = nn.initializers.normal(0.02)  # HF's initializer_range


def check_heads(hidden_size: int, num_heads: int):
  """One sentence when the hidden width does not split into the heads."""
  if hidden_size % num_heads:
    raise errors.UserError(
        f'hidden_size={hidden_size} must be divisible by num_heads='
        f'{num_heads}; use the checkpoint\'s sizes (its loader\'s options).')


def activation(name: str):
  """The MLP activation HF's `hidden_act` names."""
  if name not in ACTIVATIONS:
    raise errors.unknown_name('activation', name, ACTIVATIONS)
  return ACTIVATIONS[name]


class PreLnLayer(nn.Module):
  """Pre-LN Transformer layer of HF's ViT and CLIP: x + attention(LN(x)),
  then x + MLP(LN(x)); `mask` is flax's [B, 1, T, T] (or broadcastable)."""
  num_heads: int
  mlp_dim: int
  layer_norm_eps: float
  activation: Literal['gelu', 'quick_gelu'] = 'gelu'
  dropout: float = 0.0
  dtype: Any = jnp.float32
  kernels: kernels_lib.Kernels = kernels_lib.FLAX

  @nn.compact
  def __call__(self, x_BxTxE, mask=None, *, train: bool = False):
    drop = nn.Dropout(self.dropout, deterministic=not train)
    ln = lambda name: nn.LayerNorm(self.layer_norm_eps, dtype=self.dtype,
                                   name=name)
    y_BxTxE = ln('ln_1')(x_BxTxE)
    y_BxTxE = nn.MultiHeadDotProductAttention(
        num_heads=self.num_heads, dtype=self.dtype, kernel_init=INIT,
        dropout_rate=self.dropout, deterministic=not train,
        attention_fn=self.kernels.attention, name='attention')(
            y_BxTxE, y_BxTxE, mask=mask)
    x_BxTxE = x_BxTxE + drop(y_BxTxE)
    h_BxTxM = nn.Dense(self.mlp_dim, dtype=self.dtype, kernel_init=INIT,
                       name='mlp_in')(ln('ln_2')(x_BxTxE))
    h_BxTxM = activation(self.activation)(h_BxTxM)
    y_BxTxE = nn.Dense(x_BxTxE.shape[-1], dtype=self.dtype, kernel_init=INIT,
                       name='mlp_out')(h_BxTxM)
    return x_BxTxE + drop(y_BxTxE)


def preprocess(images_BxHxWxC, image_size: int, mean, std, resize: str):
  """Images as float32 network input: RGB, resized to image_size x
  image_size (antialiased when shrinking), then (x - mean) / std."""
  x = image.to_float_image(images_BxHxWxC, jnp.float32)
  if x.ndim != 4 or x.shape[-1] not in (1, 3):
    raise errors.UserError(
        f'HfViT takes images [B, H, W, C] with C = 1 or 3, got shape '
        f'{x.shape}; pass greyscale or RGB images.')
  if len(mean) != 3 or len(std) != 3:
    raise errors.UserError(
        f'mean={tuple(mean)} and std={tuple(std)} must give one value per RGB '
        f'channel; use three each (the checkpoint\'s preprocessor_config).')
  if resize not in RESIZES:
    raise errors.unknown_name('resize', resize, RESIZES)
  if x.shape[-1] == 1:
    x = jnp.repeat(x, 3, axis=-1)
  b, h, w, _ = x.shape
  if (h, w) != (image_size, image_size):
    x = jax.image.resize(x, (b, image_size, image_size, 3), resize)
  return (x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)


class HfViT(nn.Module):
  """HF ViT / CLIP image tower; defaults are ViT-B/16 at 224 px (google/
  vit-base-patch16-224-in21k), `ClipVision` flips the CLIP switches."""
  features: int  # != hidden_size: a new Dense `proj` maps to it
  hidden_size: int = 768
  num_layers: int = 12
  num_heads: int = 12
  mlp_dim: int = 3072
  image_size: int = 224  # inputs are resized to it; fixes the position table
  patch_size: int = 16
  layer_norm_eps: float = 1e-12  # ViT's; CLIP's is 1e-5
  activation: Literal['gelu', 'quick_gelu'] = 'gelu'  # CLIP: quick_gelu
  pre_norm: bool = False  # CLIP: LayerNorm the embeddings (`pre_layrnorm`)
  patch_bias: bool = True  # CLIP's patch conv has none
  mean: tuple[float, ...] = VIT_MEAN  # per RGB channel, on [0, 1] pixels
  std: tuple[float, ...] = VIT_STD
  resize: Literal['nearest', 'bilinear', 'bicubic', 'lanczos3'] = 'bilinear'
  pool: bool = False  # only token 0: the normed [CLS] (CLIP: pooler_output)
  dropout: float = 0.0  # on embeddings, attention weights and layer outputs
  dtype: Any = jnp.float32
  kernels: kernels_lib.Kernels = kernels_lib.FLAX  # its attention and conv

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    check_heads(self.hidden_size, self.num_heads)
    x = preprocess(x, self.image_size, self.mean, self.std, self.resize)
    p = (self.patch_size, self.patch_size)
    x_BxhxwxE = self.kernels.conv(
        self.hidden_size, p, strides=p, padding='VALID',
        use_bias=self.patch_bias, dtype=self.dtype, name='patch_embed')(
            x.astype(self.dtype))
    b, h, w, e = x_BxhxwxE.shape
    cls_E = self.param('cls_token', INIT, (e,))
    pos_TxE = self.param('position_embeddings', INIT, (1 + h * w, e))
    x_BxTxE = jnp.concatenate(
        [jnp.broadcast_to(cls_E.astype(self.dtype), (b, 1, e)),
         x_BxhxwxE.reshape(b, h * w, e)], axis=1) + pos_TxE.astype(self.dtype)
    if self.pre_norm:
      x_BxTxE = nn.LayerNorm(self.layer_norm_eps, dtype=self.dtype,
                             name='pre_ln')(x_BxTxE)
    x_BxTxE = nn.Dropout(self.dropout, deterministic=not train)(x_BxTxE)
    for i in range(self.num_layers):
      x_BxTxE = PreLnLayer(self.num_heads, self.mlp_dim, self.layer_norm_eps,
                           self.activation, self.dropout, self.dtype,
                           self.kernels, name=f'layer_{i}')(x_BxTxE,
                                                            train=train)
    x_BxTxE = nn.LayerNorm(self.layer_norm_eps, dtype=self.dtype,
                           name='final_ln')(x_BxTxE)
    if self.pool:
      x_BxTxE = x_BxTxE[:, :1]
    if self.features != self.hidden_size:
      x_BxTxE = nn.Dense(self.features, dtype=self.dtype, name='proj')(x_BxTxE)
    return x_BxTxE, jnp.ones(x_BxTxE.shape[:2], jnp.bool_)


class ClipVision(HfViT):
  """CLIP's image tower (`CLIPVisionModel`); defaults are ViT-B/16 at 224 px
  (openai/clip-vit-base-patch16)."""
  layer_norm_eps: float = 1e-5
  activation: Literal['gelu', 'quick_gelu'] = 'quick_gelu'
  pre_norm: bool = True
  patch_bias: bool = False
  mean: tuple[float, ...] = CLIP_MEAN
  std: tuple[float, ...] = CLIP_STD
  resize: Literal['nearest', 'bilinear', 'bicubic', 'lanczos3'] = 'bicubic'
