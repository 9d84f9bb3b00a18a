"""Non-local gate fusion (NL-Gate).

Wang, Tran & Feiszli, "What Makes Training Multi-Modal Classification Networks
Hard?", CVPR 2020 (appendix, NL-Gate mid-level fusion), as packaged in
MultiBench (Liang et al., NeurIPS 2021). The gate is the embedded-Gaussian
non-local operation of Wang et al., "Non-local Neural Networks", CVPR 2018.

Shape legend: B batch, T query tokens, S key/value tokens, D width.
"""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from mmfusion.nn import layers
from mmfusion.fusion import common

Dtype = Any


class NLGate(nn.Module):
  """A query modality's tokens attend the other modalities' tokens.

  q = W_q x_query, k = W_k x_other, v = W_v x_other; the attended values
  softmax(q k^T / sqrt(D)) v pass a Linear and are added to the query tokens
  (a non-local block), which are then mean-pooled to [B, D].

  Missing: absent key/value modalities are masked out of the attention; an
  example with no present key gets no update (just its query). An absent query
  modality is replaced by a learned token, which still attends the others.
  """
  features: int | None = None  # None: widest modality width
  query: str | None = None  # None: first modality in sorted order
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, tokens, masks, present, *, train: bool = False):
    cleaned = common.clean_tokens(tokens, masks, present, self.dtype)
    names = list(cleaned)
    query = common.choose_modality('nlgate', 'query', self.query, names)
    common.need_two('nlgate', names)
    d = common.width(self.features, [x.shape[-1] for x, _ in cleaned.values()])
    dense = lambda name: nn.Dense(d, dtype=self.dtype, name=name)

    x_BxTxE, q_valid_BxT = cleaned[query]
    p_B = common.present_of(present, query, x_BxTxE.shape[0])
    x_BxTxD = common.Missing(self.dtype, name=f'missing_{query}')(
        dense(f'proj_{query}')(x_BxTxE), p_B)
    q_valid_BxT = q_valid_BxT | ~p_B[:, None]

    kv = [(dense(f'proj_{m}')(cleaned[m][0]), cleaned[m][1])
          for m in common.others(names, query)]
    kv_BxSxD = jnp.concatenate([x for x, _ in kv], axis=1)
    kv_valid_BxS = jnp.concatenate([v for _, v in kv], axis=1)

    q_BxTxD = dense('query')(x_BxTxD)
    k_BxSxD = dense('key')(kv_BxSxD)
    v_BxSxD = dense('value')(kv_BxSxD)
    logits_BxTxS = jnp.einsum('btd,bsd->bts', q_BxTxD, k_BxSxD) / jnp.sqrt(
        jnp.asarray(d, self.dtype))
    att_BxTxS = common.masked_softmax(
        logits_BxTxS, kv_valid_BxS[:, None, :], axis=-1)
    y_BxTxD = dense('out')(jnp.einsum('bts,bsd->btd', att_BxTxS, v_BxSxD))
    has_kv_B = jnp.any(kv_valid_BxS, axis=1)
    y_BxTxD = x_BxTxD + jnp.where(has_kv_B[:, None, None], y_BxTxD, 0)
    return layers.masked_mean(y_BxTxD, q_valid_BxT)
