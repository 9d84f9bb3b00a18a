"""Attention-based feature-level fusion: MulT, MBT bottlenecks, Perceiver.

All three project each modality's tokens to a common width D with a Linear
and add sine-cosine positions, then use the shared pre-LN `layers.Block`.
Absent modalities and padding tokens are masked out of every attention; a
cross-attention whose query has no present key leaves the query unchanged
(no NaN, no dependence on the absent values).

Shape legend: B batch, T tokens, N latent or bottleneck tokens, D width,
M modalities.
"""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from mmfusion.runtime import errors
from mmfusion.nn import kernels as kernels_lib
from mmfusion.nn import layers
from mmfusion.fusion import common

Dtype = Any


def unless_no_keys(kv_valid_BxS, new_BxTxD, old_BxTxD):
  """new where the example has at least one real key, else old."""
  has_kv_B = jnp.any(kv_valid_BxS, axis=1)
  return jnp.where(has_kv_B[:, None, None], new_BxTxD, old_BxTxD)


class CrossAttention(nn.Module):
  """Directional cross-modal Transformer (MulT: Tsai et al., "Multimodal
  Transformer for Unaligned Multimodal Language Sequences", ACL 2019).

  For each target modality and each other source modality, `num_layers`
  blocks where the target tokens query the source tokens (the source keys
  stay at the low-level embedding, as in MulT); the M - 1 streams are
  concatenated, projected to D, passed through a self-attention block and
  mean-pooled; the M pooled targets are concatenated and projected to D.

  With `output='tokens'`: the M targets' tokens after their self-attention
  block and norm, concatenated ([B, sum T_m, D], valid), for a decoder.

  Missing: an absent source is masked out (its blocks become identity); an
  absent target's query tokens are a learned token, still attending the
  present sources.
  """
  features: int | None = None  # None: widest modality width
  num_layers: int = 1  # cross-modal blocks per (target, source) pair
  output: str = 'pooled'  # or 'tokens'
  num_heads: int = 4
  mlp_dim: int | None = None  # None: 4 * width
  dropout: float = 0.0
  dtype: Dtype = jnp.float32
  kernels: kernels_lib.Kernels = kernels_lib.FLAX

  @nn.compact
  def __call__(self, tokens, masks, present, *, train: bool = False):
    common.check_output('cross_attention', self.output)
    cleaned = common.clean_tokens(tokens, masks, present, self.dtype)
    names = list(cleaned)
    common.need_two('cross_attention', names)
    d = common.width(self.features, [x.shape[-1] for x, _ in cleaned.values()])
    block = lambda name: layers.Block(
        self.num_heads, self.mlp_dim or 4 * d, self.dropout, self.dtype,
        self.kernels, name=name)
    embedded = common.embed_tokens(cleaned, d, self.dtype)
    pooled, targets = [], []
    for tgt in names:
      q_BxTxD, q_valid_BxT = embedded[tgt]
      p_B = common.present_of(present, tgt, q_BxTxD.shape[0])
      q_BxTxD = common.Missing(self.dtype, name=f'missing_{tgt}')(q_BxTxD, p_B)
      q_valid_BxT = q_valid_BxT | ~p_B[:, None]
      streams = []
      for src in common.others(names, tgt):
        kv_BxSxD, kv_valid_BxS = embedded[src]
        h_BxTxD = q_BxTxD
        for i in range(self.num_layers):
          new = block(f'{src}_to_{tgt}_{i}')(
              h_BxTxD, q_valid_BxT, kv_BxSxD=kv_BxSxD, kv_mask_BxS=kv_valid_BxS,
              train=train)
          h_BxTxD = unless_no_keys(kv_valid_BxS, new, h_BxTxD)
        streams.append(h_BxTxD)
      h_BxTxD = jnp.concatenate(streams, axis=-1)  # [B, T, (M - 1) D]
      if len(streams) > 1:
        h_BxTxD = nn.Dense(d, dtype=self.dtype, name=f'merge_{tgt}')(h_BxTxD)
      h_BxTxD = block(f'self_{tgt}')(h_BxTxD, q_valid_BxT, train=train)
      h_BxTxD = nn.LayerNorm(dtype=self.dtype, name=f'norm_{tgt}')(h_BxTxD)
      targets.append((h_BxTxD, q_valid_BxT))
      pooled.append(layers.masked_mean(h_BxTxD, q_valid_BxT))
    if self.output == 'tokens':
      return common.concat_tokens(targets)
    return nn.Dense(d, dtype=self.dtype, name='out')(
        jnp.concatenate(pooled, axis=-1))


class Bottleneck(nn.Module):
  """Attention bottlenecks (MBT: Nagrani et al., "Attention Bottlenecks for
  Multimodal Fusion", NeurIPS 2021).

  Layers before `fusion_layer` are per-modality self-attention blocks. In each
  later layer every modality's block attends over [its tokens; the shared
  bottleneck tokens], and the new bottleneck is the mean of the modalities'
  bottleneck updates, so modalities exchange information only through the
  bottleneck. A bottleneck written in one fusion layer is read in the next, so
  information crosses modalities only with two or more fusion layers
  (`num_layers - fusion_layer >= 2`); the default fuses in both layers (with
  a single fusion layer, the bottleneck it reads is the learned, input-free
  one: an additive model). Weights are per modality. Output: the mean over
  modalities of each one's mean-pooled, layer-normed tokens.

  Missing: an absent modality's tokens are masked out, and it is left out of
  the bottleneck average and of the output mean (renormalised over present
  ones); with no modality present the bottleneck is kept and the output is 0.

  With `output='tokens'`: every modality's layer-normed tokens, then the
  final bottleneck tokens, concatenated ([B, sum T_m + N, D], valid).
  """
  features: int | None = None  # None: widest modality width
  num_layers: int = 2
  output: str = 'pooled'  # or 'tokens'
  fusion_layer: int = 0  # first layer that uses the bottleneck
  n_bottlenecks: int = 4
  num_heads: int = 4
  mlp_dim: int | None = None  # None: 4 * width
  dropout: float = 0.0
  dtype: Dtype = jnp.float32
  kernels: kernels_lib.Kernels = kernels_lib.FLAX

  @nn.compact
  def __call__(self, tokens, masks, present, *, train: bool = False):
    common.check_output('bottleneck', self.output)
    if not 0 <= self.fusion_layer <= self.num_layers:
      raise errors.UserError(
          f'fusion \'bottleneck\': fusion_layer={self.fusion_layer} must be '
          f'between 0 and num_layers={self.num_layers}.')
    cleaned = common.clean_tokens(tokens, masks, present, self.dtype)
    names = list(cleaned)
    d = common.width(self.features, [x.shape[-1] for x, _ in cleaned.values()])
    x = {m: xv[0] for m, xv in common.embed_tokens(cleaned, d, self.dtype).items()}
    valid = {m: xv[1] for m, xv in cleaned.items()}
    b = next(iter(x.values())).shape[0]
    p_BxM = jnp.stack([common.present_of(present, m, b) for m in names], 1)
    bott_NxD = self.param('bottleneck', nn.initializers.normal(0.02),
                          (self.n_bottlenecks, d))
    bott_BxNxD = jnp.broadcast_to(bott_NxD.astype(self.dtype),
                                  (b, self.n_bottlenecks, d))
    n_ones_BxN = jnp.ones((b, self.n_bottlenecks), jnp.bool_)

    for i in range(self.num_layers):
      updates = []
      for m in names:
        blk = layers.Block(self.num_heads, self.mlp_dim or 4 * d, self.dropout,
                           self.dtype, self.kernels, name=f'{m}_{i}')
        if i < self.fusion_layer:
          x[m] = blk(x[m], valid[m], train=train)
          continue
        t = x[m].shape[1]
        y = blk(jnp.concatenate([x[m], bott_BxNxD], 1),
                jnp.concatenate([valid[m], n_ones_BxN], 1), train=train)
        x[m], b_BxNxD = y[:, :t], y[:, t:]
        updates.append(b_BxNxD)
      if updates:
        new_BxNxD = common.present_mean(jnp.stack(updates, axis=1), p_BxM)
        bott_BxNxD = jnp.where(jnp.any(p_BxM, axis=1)[:, None, None],
                               new_BxNxD, bott_BxNxD)

    normed = {m: nn.LayerNorm(dtype=self.dtype, name=f'norm_{m}')(x[m])
              for m in names}
    if self.output == 'tokens':
      return common.concat_tokens([(normed[m], valid[m]) for m in names] +
                                  [(bott_BxNxD, n_ones_BxN)])
    pooled = [layers.masked_mean(normed[m], valid[m]) for m in names]
    return common.present_mean(jnp.stack(pooled, axis=1), p_BxM)


class Perceiver(nn.Module):
  """Perceiver (Jaegle et al., "Perceiver: General Perception with Iterative
  Attention", ICML 2021) over the tokens of all modalities.

  A learned latent array [N, D] cross-attends all modality tokens (each with
  positions and a learned modality embedding), then `num_layers` latent
  self-attention blocks; the latents are mean-pooled to [B, D].

  Missing: absent modalities' tokens are masked out of the cross-attention;
  with none present the latents skip it and the output depends on the learned
  latents only.

  With `output='tokens'`: the N latents ([B, N, D], all valid).
  """
  features: int | None = None  # latent width; None: widest modality width
  num_latents: int = 8
  output: str = 'pooled'  # or 'tokens'
  num_layers: int = 1  # latent self-attention blocks
  num_heads: int = 4
  mlp_dim: int | None = None  # None: 4 * width
  dropout: float = 0.0
  dtype: Dtype = jnp.float32
  kernels: kernels_lib.Kernels = kernels_lib.FLAX

  @nn.compact
  def __call__(self, tokens, masks, present, *, train: bool = False):
    common.check_output('perceiver', self.output)
    cleaned = common.clean_tokens(tokens, masks, present, self.dtype)
    d = common.width(self.features, [x.shape[-1] for x, _ in cleaned.values()])
    block = lambda name: layers.Block(
        self.num_heads, self.mlp_dim or 4 * d, self.dropout, self.dtype,
        self.kernels, name=name)
    xs, valids = [], []
    for m, (x_BxTxD, valid_BxT) in common.embed_tokens(
        cleaned, d, self.dtype).items():
      emb_D = self.param(f'modality_{m}', nn.initializers.normal(0.02), (d,))
      xs.append(x_BxTxD + emb_D.astype(self.dtype))
      valids.append(valid_BxT)
    kv_BxSxD = jnp.concatenate(xs, axis=1)
    kv_valid_BxS = jnp.concatenate(valids, axis=1)
    b = kv_BxSxD.shape[0]
    lat_NxD = self.param('latents', nn.initializers.normal(0.02),
                         (self.num_latents, d))
    lat_BxNxD = jnp.broadcast_to(lat_NxD.astype(self.dtype),
                                 (b, self.num_latents, d))
    h_BxNxD = block('cross')(lat_BxNxD, kv_BxSxD=kv_BxSxD,
                             kv_mask_BxS=kv_valid_BxS, train=train)
    h_BxNxD = unless_no_keys(kv_valid_BxS, h_BxNxD, lat_BxNxD)
    for i in range(self.num_layers):
      h_BxNxD = block(f'latent_{i}')(h_BxNxD, train=train)
    h_BxNxD = nn.LayerNorm(dtype=self.dtype, name='norm')(h_BxNxD)
    if self.output == 'tokens':
      return h_BxNxD, jnp.ones(h_BxNxD.shape[:2], jnp.bool_)
    return jnp.mean(h_BxNxD, axis=1)
