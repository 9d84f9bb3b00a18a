"""The fusion registry: the name a config gives as `model.fusion`.

Stages and call signatures (B batch, T_m tokens, D_m width, C classes):
  early         Module(inputs: {m: [B, ..., F_m]}, present: {m: bool[B]})
                -> the fused input for one shared encoder.
  intermediate  Module(tokens: {m: [B, T_m, D_m]}, masks: {m: bool[B, T_m]},
                present: {m: bool[B]}, *, train) -> [B, D_out].
  late          Module(logits: {m: [B, C]}, present: {m: bool[B]}, *, train)
                -> [B, C] logits for a softmax cross-entropy.
Modalities are always taken in sorted key order. The intermediate modules
with an `output` field (`yields_tokens`: concat, cross_attention,
bottleneck, perceiver) give, with `output='tokens'`, their tokens
([B, N, D], valid bool [B, N]) instead, for a text decoder to read.
"""

import dataclasses

import flax.linen as nn

from mmfusion.runtime import errors
from mmfusion.nn import registry
from mmfusion.fusion import attention
from mmfusion.fusion import early
from mmfusion.fusion import film
from mmfusion.fusion import late
from mmfusion.fusion import nlgate
from mmfusion.fusion import simple
from mmfusion.fusion import tensor

STAGES = ('early', 'intermediate', 'late')


@dataclasses.dataclass(frozen=True)
class FusionSpec:
  stage: str  # 'early' | 'intermediate' | 'late'
  module: type[nn.Module]


FUSIONS: dict[str, FusionSpec] = {
    'early': FusionSpec('early', early.Early),
    'concat': FusionSpec('intermediate', simple.Concat),
    'sum': FusionSpec('intermediate', simple.Sum),
    'gated': FusionSpec('intermediate', simple.Gated),
    'nlgate': FusionSpec('intermediate', nlgate.NLGate),
    'tensor': FusionSpec('intermediate', tensor.TensorFusion),
    'low_rank_tensor': FusionSpec('intermediate', tensor.LowRankTensor),
    'multiplicative': FusionSpec('intermediate', tensor.Multiplicative),
    'film': FusionSpec('intermediate', film.FiLM),
    'cross_attention': FusionSpec('intermediate', attention.CrossAttention),
    'bottleneck': FusionSpec('intermediate', attention.Bottleneck),
    'perceiver': FusionSpec('intermediate', attention.Perceiver),
    'late_logits': FusionSpec('late', late.LateLogits),
    'late_probs': FusionSpec('late', late.LateProbs),
    'late_poe': FusionSpec('late', late.LatePoE),
    'late_weighted': FusionSpec('late', late.LateWeighted),
    'late_stacking': FusionSpec('late', late.LateStacking),
}


def names_of(stage: str) -> list[str]:
  """The registered fusion names of one stage, in registry order."""
  return [name for name, spec in FUSIONS.items() if spec.stage == stage]


def yields_tokens(name: str) -> bool:
  """Whether fusion `name` can give tokens (`output='tokens'`); early fusion
  does, through its shared encoder."""
  spec = get_fusion(name)
  return spec.stage == 'early' or 'output' in spec.module.__dataclass_fields__


def get_fusion(name: str) -> FusionSpec:
  if name not in FUSIONS:
    raise errors.unknown_name('fusion', name, FUSIONS)
  return FUSIONS[name]


def make_fusion(name: str, *, module_name: str | None = None,
                **kwargs) -> nn.Module:
  """The fusion module `name` configured with `kwargs` (model.fusion_kwargs)."""
  return registry.build('fusion', name, {k: v.module for k, v in FUSIONS.items()},
                       kwargs, module_name)
