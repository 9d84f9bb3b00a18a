"""Feature-level fusion of pooled modality vectors: concat, sum, gated.

The baselines of the taxonomy in Baltrušaitis, Ahuja & Morency, "Multimodal
Machine Learning: A Survey and Taxonomy", TPAMI 2019. Every module pools each
modality's tokens with a masked mean over its real tokens first.

Shape legend: B batch, T tokens, D width, M modalities.
"""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from mmfusion.fusion import common

Dtype = Any


class Concat(nn.Module):
  """Concatenation of pooled modality vectors in sorted order (+ Linear).

  With `output='tokens'` (a text decoder's memory, as PaLI concatenates its
  image and text tokens): the modalities' token sequences, each projected
  to `features` (None: the widest width) with sin-cos positions and a
  learned modality embedding, concatenated along the tokens in sorted
  order: ([B, sum T_m, D], valid [B, sum T_m]).

  Missing: an absent modality's vector is a learned embedding (zero-init);
  its tokens are masked out.
  """
  features: int | None = None  # None: plain concatenation, no Linear
  output: str = 'pooled'  # or 'tokens'
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, tokens, masks, present, *, train: bool = False):
    common.check_output('concat', self.output)
    cleaned = common.clean_tokens(tokens, masks, present, self.dtype)
    if self.output == 'tokens':
      d = common.width(self.features, [x.shape[-1] for x, _ in cleaned.values()])
      pairs = []
      for m, (x_BxTxD, valid_BxT) in common.embed_tokens(
          cleaned, d, self.dtype).items():
        emb_D = self.param(f'modality_{m}', nn.initializers.normal(0.02), (d,))
        pairs.append((x_BxTxD + emb_D.astype(self.dtype), valid_BxT))
      return common.concat_tokens(pairs)
    pooled = common.pool(cleaned)
    zs = []
    for m, z_BxD in pooled.items():
      p_B = common.present_of(present, m, z_BxD.shape[0])
      zs.append(common.Missing(self.dtype, name=f'missing_{m}')(z_BxD, p_B))
    z = jnp.concatenate(zs, axis=-1)  # [B, sum D_m]
    if self.features is not None:
      z = nn.Dense(self.features, dtype=self.dtype, name='linear')(z)
    return z


class Sum(nn.Module):
  """Sum of per-modality Linear projections to a common width.

  Missing: absent modalities are left out of the sum (so their bias is too);
  with none present the output is zero.
  """
  features: int | None = None  # None: widest modality width
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, tokens, masks, present, *, train: bool = False):
    pooled = common.pool(common.clean_tokens(tokens, masks, present, self.dtype))
    d = common.width(self.features, [z.shape[-1] for z in pooled.values()])
    total_BxD = 0
    for m, z_BxD in pooled.items():
      h_BxD = nn.Dense(d, dtype=self.dtype, name=f'proj_{m}')(z_BxD)
      p_B = common.present_of(present, m, z_BxD.shape[0])
      total_BxD = total_BxD + jnp.where(p_B[:, None], h_BxD, 0)
    return total_BxD


class Gated(nn.Module):
  """Gated Multimodal Unit (Arevalo et al., "Gated Multimodal Units for
  Information Fusion", ICLR-W 2017), generalised to M modalities.

  h_m = tanh(W_m z_m); per-channel gates g = softmax_m(W_g [z_1; ...; z_M]);
  output sum_m g_m * h_m. For two modalities the softmax equals the paper's
  sigmoid gate g and 1 - g.

  Missing: the gate input uses a learned embedding for an absent modality, and
  its gate logits are masked, so the gates renormalise over present ones; with
  none present the output is zero.
  """
  features: int | None = None  # None: widest modality width
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, tokens, masks, present, *, train: bool = False):
    pooled = common.pool(common.clean_tokens(tokens, masks, present, self.dtype))
    names = list(pooled)
    b = next(iter(pooled.values())).shape[0]
    d = common.width(self.features, [z.shape[-1] for z in pooled.values()])
    p_BxM = jnp.stack([common.present_of(present, m, b) for m in names], 1)
    hs, zs = [], []
    for i, m in enumerate(names):
      hs.append(jnp.tanh(nn.Dense(d, dtype=self.dtype, name=f'proj_{m}')(
          pooled[m])))
      zs.append(common.Missing(self.dtype, name=f'missing_{m}')(
          pooled[m], p_BxM[:, i]))
    h_BxMxD = jnp.stack(hs, axis=1)
    gate_logits = nn.Dense(len(names) * d, dtype=self.dtype, name='gate')(
        jnp.concatenate(zs, axis=-1))
    gate_logits_BxMxD = gate_logits.reshape(b, len(names), d)
    g_BxMxD = common.masked_softmax(gate_logits_BxMxD, p_BxM[..., None], 1)
    return jnp.sum(g_BxMxD * h_BxMxD, axis=1)
