"""One model class: encoders -> fusion -> head, assembled from the config.

The fusion registry entry decides the assembly:
  early         inputs -> early fusion -> one shared encoder -> head
  intermediate  per-modality encoder -> fusion -> head
  late          per-modality encoder -> per-modality head -> fusion of logits

The head has the width the run's task asks for (`tasks`: classes, labels,
targets or a projection), so `out_BxO` are logits for classification. A
model built with `memory` has no head and returns what a text decoder
attends to instead, (memory_BxMxD, valid_BxM): the fusion module's tokens
(`memory='tokens'`, for a fusion that `yields_tokens`; early fusion: the
shared encoder's tokens) or its pooled output as one token ('pooled').
`aux` holds what a user of the trained model may want besides the outputs:
`embedding/<m>` (each encoder's tokens, mean-pooled over the real ones), and
`embedding/fused` (the fusion module's output, or for early fusion the shared
encoder's pooled tokens); late fusion adds `<m>/logits` and has no fused
embedding.

Shape legend: B batch, T tokens, D width, O head outputs.
Modalities are visited in sorted order, as JAX visits dict keys.
"""

from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmfusion import encoders as encoders_lib
from mmfusion import fusion as fusion_lib
from mmfusion import pretrained
from mmfusion.pretrained import lora
from mmfusion.nn import heads
from mmfusion.nn import kernels as kernels_lib
from mmfusion.nn import layers
from mmfusion.nn import registry
from mmfusion.runtime import errors

Dtype = Any
DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16,
          'float16': jnp.float16}


def present_of(batch, m):
  """[B] bool presence of modality `m`; a batch without the key has it all."""
  key = f'present/{m}'
  if key in batch:
    return batch[key].astype(jnp.bool_)
  return jnp.ones(batch[m].shape[:1], jnp.bool_)


def _zero_absent(x, present_B):
  """Absent modalities' inputs become zeros, so their values cannot leak."""
  keep = present_B.reshape(present_B.shape + (1,) * (x.ndim - 1))
  return jnp.where(keep, x, jnp.zeros_like(x))


def _stop_frozen(variables):
  """An encoder's variables with gradients stopped, but for `proj`."""
  keep = pretrained.TRAINABLE_WHEN_FROZEN
  return {c: {k: v if k == keep else jax.lax.stop_gradient(v)
              for k, v in tree.items()} for c, tree in variables.items()}


class MultimodalModel(nn.Module):
  """Encoders, one fusion module and a head; returns (out_BxO, aux)."""
  encoders: Mapping[str, Mapping[str, Any]]  # modality -> {'name': ..., opts}
  fusion: str
  num_outputs: int  # the head's width, set by the task
  fusion_kwargs: Mapping[str, Any] = None
  early_encoder: Mapping[str, Any] = None  # the shared encoder of `early`
  head_hidden: tuple[int, ...] = ()
  dtype: Dtype = jnp.float32
  remat: bool = False  # recompute encoder activations in the backward pass
  kernels: kernels_lib.Kernels = kernels_lib.FLAX  # handed to every module
  memory: str | None = None  # None: a head; 'tokens' | 'pooled': a memory

  def _encoder(self, cfg, name):
    opts = pretrained.module_options(cfg)
    return encoders_lib.make_encoder(
        opts.pop('name'), module_name=name, **opts, dtype=self.dtype,
        kernels=self.kernels)

  def _encode(self, encoder, x, train: bool, cfg=None, m: str = ''):
    """`encoder(x, train=train)`, its activations recomputed in the backward
    pass with `remat` (`train` stays a Python bool, closed over). A frozen
    encoder's parameters (all but a new `proj`) pass through stop_gradient,
    so XLA drops their backward pass; under LoRA they also get the low-rank
    updates of the model's `lora_<m>` (`pretrained.lora`)."""
    call = lambda module, x: module(x, train=train)
    finetune = (cfg or {}).get('finetune', 'full')
    if finetune == 'frozen':
      call = nn.map_variables(call, 'params', trans_in_fn=_stop_frozen,
                              init=True)
    elif finetune == 'lora':
      factors = self._lora_factors(encoder, x, cfg, m)
      call = nn.map_variables(call, 'params', init=True,
                              trans_in_fn=lora.adapted(factors))
    return (nn.remat(call) if self.remat else call)(encoder, x)

  def _lora_factors(self, encoder, x, cfg, m: str):
    """The LoRA factors of encoder `m`, shaped from its projections (an
    abstract init: nothing is computed)."""
    shapes = jax.eval_shape(
        lambda x: encoder.clone(parent=None).init(jax.random.key(0), x),
        jax.ShapeDtypeStruct(x.shape, x.dtype))['params']
    found = lora.targets(shapes)
    lora.check(cfg['name'], found)
    return self.param(f'lora_{m}', lora.init_factors(
        found, int(cfg.get('lora_rank', pretrained.LORA_RANK))))

  def _fusion(self):
    kwargs = dict(self.fusion_kwargs or {})
    if self.memory == 'tokens':
      kwargs['output'] = 'tokens'
    return fusion_lib.make_fusion(
        self.fusion, module_name='fusion', **kwargs, dtype=self.dtype,
        kernels=self.kernels)

  def _memory(self, tokens_BxTxD, mask_BxT, pooled_BxD):
    """(memory_BxMxD, valid_BxM) of `memory`: the tokens, or one token."""
    if self.memory == 'tokens':
      return tokens_BxTxD, mask_BxT
    return pooled_BxD[:, None], jnp.ones(pooled_BxD.shape[:1] + (1,), bool)

  def _head(self, name):
    return heads.Head(self.num_outputs, self.head_hidden, self.dtype,
                      name=name)

  @nn.compact
  def __call__(self, batch, *, train: bool = False):
    modalities = sorted(self.encoders)
    present = {m: present_of(batch, m) for m in modalities}
    inputs = {m: _zero_absent(batch[m], present[m]) for m in modalities}
    stage = fusion_lib.get_fusion(self.fusion).stage
    aux = {}
    if stage == 'early':
      x = self._fusion()(inputs, present)
      tokens, mask = self._encode(
          self._encoder(self.early_encoder, 'encoder_early'), x, train)
      aux['embedding/fused'] = layers.masked_mean(tokens, mask)
      if self.memory:
        return self._memory(tokens, mask, aux['embedding/fused']), aux
      return self._head('head')(aux['embedding/fused']), aux

    encoded = {m: self._encode(self._encoder(self.encoders[m], f'encoder_{m}'),
                               inputs[m], train, self.encoders[m], m)
               for m in modalities}
    for m, (tokens, mask) in encoded.items():
      aux[f'embedding/{m}'] = layers.masked_mean(tokens, mask)
    if stage == 'intermediate':
      z_BxD = self._fusion()({m: t for m, (t, _) in encoded.items()},
                             {m: k for m, (_, k) in encoded.items()},
                             present, train=train)
      if self.memory == 'tokens':
        tokens, mask = z_BxD
        aux['embedding/fused'] = layers.masked_mean(tokens, mask)
        return (tokens, mask), aux
      aux['embedding/fused'] = z_BxD
      if self.memory:
        return self._memory(None, None, z_BxD), aux
      return self._head('head')(z_BxD), aux

    per_modality = {}
    for m in modalities:
      per_modality[m] = self._head(f'head_{m}')(aux[f'embedding/{m}'])
      aux[f'{m}/logits'] = per_modality[m]
    logits_BxC = self._fusion()(per_modality, present, train=train)
    return logits_BxC.astype(jnp.float32), aux  # f32, as every Head gives


def check_config(model_config):
  """Fails in one sentence on an unknown name or option in `config.model`."""
  registry.check_options('model.fusion_kwargs', model_config.fusion_kwargs)
  fusion_lib.make_fusion(model_config.fusion, **model_config.fusion_kwargs)
  encoders = dict(model_config.encoders)
  if fusion_lib.get_fusion(model_config.fusion).stage == 'early':
    encoders['early'] = model_config.early_encoder
  for m, c in encoders.items():
    where = ('model.early_encoder' if m == 'early' else
             f'model.encoders.{m}')
    if 'name' not in c:
      raise errors.UserError(
          f'{where} has no name; set e.g. --config.{where}.name=mlp.')
    pretrained.check(where, c)
    options = pretrained.module_options(c)
    registry.check_options(where, options)
    try:
      encoders_lib.make_encoder(**options)
    except errors.UserError as e:  # say which modality's encoder
      raise errors.UserError(f'{where}: {e}') from None
  if model_config.dtype not in DTYPES:
    raise errors.unknown_name('model.dtype', model_config.dtype, DTYPES)
  if model_config.kernels not in kernels_lib.CHOICES:
    raise errors.unknown_name('model.kernels', model_config.kernels,
                              kernels_lib.CHOICES)


def from_config(model_config, num_outputs: int, modalities=None,
                memory: str | None = None) -> MultimodalModel:
  """The model that a checked `config.model` describes, with a head of
  `num_outputs` (or, with `memory`, a decoder's memory), over `modalities`
  (default: every encoder's); `model.kernels` is resolved here, once."""
  encoders = {m: dict(c) for m, c in model_config.encoders.items()
              if modalities is None or m in modalities}
  return MultimodalModel(
      encoders=encoders,
      fusion=model_config.fusion,
      num_outputs=num_outputs,
      fusion_kwargs=dict(model_config.fusion_kwargs),
      early_encoder=dict(model_config.early_encoder),
      head_hidden=tuple(model_config.head_hidden),
      remat=bool(model_config.remat),
      dtype=DTYPES[model_config.dtype],
      kernels=kernels_lib.resolve(model_config.kernels),
      memory=memory)
