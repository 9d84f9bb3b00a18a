"""One model class: encoders -> fusion -> task head, assembled from the config.

The fusion registry entry decides the assembly:
  early         inputs -> early fusion -> one shared encoder -> head
  intermediate  per-modality encoder -> fusion -> head
  late          per-modality encoder -> per-modality head -> fusion of logits

Shape legend: B batch, T tokens, D width, C classes.
Modalities are visited in sorted order, as JAX visits dict keys.
"""

from typing import Any, Mapping

import flax.linen as nn
import jax.numpy as jnp

from mmfusion import encoders as encoders_lib
from mmfusion import errors
from mmfusion import fusion as fusion_lib
from mmfusion import layers

Dtype = Any
DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16,
          'float16': jnp.float16}


class Head(nn.Module):
  """MLP classifier head: hidden Dense+ReLU layers, then Dense(C), f32 logits."""
  num_classes: int
  hidden: tuple[int, ...] = ()
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, z_BxD):
    for width in self.hidden:
      z_BxD = nn.relu(nn.Dense(width, dtype=self.dtype)(z_BxD))
    return nn.Dense(self.num_classes, dtype=self.dtype)(z_BxD).astype(
        jnp.float32)


def _present(batch, m):
  """[B] bool presence of modality `m`; a batch without the key has it all."""
  key = f'present/{m}'
  if key in batch:
    return batch[key].astype(jnp.bool_)
  return jnp.ones(batch[m].shape[:1], jnp.bool_)


def _zero_absent(x, present_B):
  """Absent modalities' inputs become zeros, so their values cannot leak."""
  keep = present_B.reshape(present_B.shape + (1,) * (x.ndim - 1))
  return jnp.where(keep, x, jnp.zeros_like(x))


class MultimodalModel(nn.Module):
  """Encoders, one fusion module and a head; returns (logits_BxC, aux)."""
  encoders: Mapping[str, Mapping[str, Any]]  # modality -> {'name': ..., opts}
  fusion: str
  num_classes: int
  fusion_kwargs: Mapping[str, Any] = None
  early_encoder: Mapping[str, Any] = None  # the shared encoder of `early`
  head_hidden: tuple[int, ...] = ()
  dtype: Dtype = jnp.float32
  remat: bool = False  # recompute encoder activations in the backward pass

  def _encoder(self, cfg, name):
    cfg = dict(cfg)
    return encoders_lib.make_encoder(cfg.pop('name'), dtype=self.dtype,
                                     module_name=name, remat=self.remat, **cfg)

  def _fusion(self):
    return fusion_lib.make_fusion(self.fusion, dtype=self.dtype,
                                  module_name='fusion',
                                  **dict(self.fusion_kwargs or {}))

  @nn.compact
  def __call__(self, batch, *, train: bool = False):
    modalities = sorted(self.encoders)
    present = {m: _present(batch, m) for m in modalities}
    inputs = {m: _zero_absent(batch[m], present[m]) for m in modalities}
    stage = fusion_lib.get_fusion(self.fusion).stage
    aux = {}
    if stage == 'early':
      x = self._fusion()(inputs, present)
      tokens, mask = self._encoder(self.early_encoder, 'encoder_early')(
          x, train=train)
      logits_BxC = Head(self.num_classes, self.head_hidden, self.dtype,
                        name='head')(layers.masked_mean(tokens, mask))
      return logits_BxC, aux

    encoded = {m: self._encoder(self.encoders[m], f'encoder_{m}')(
        inputs[m], train=train) for m in modalities}
    if stage == 'intermediate':
      z_BxD = self._fusion()({m: t for m, (t, _) in encoded.items()},
                             {m: k for m, (_, k) in encoded.items()},
                             present, train=train)
      aux['fused'] = z_BxD
      logits_BxC = Head(self.num_classes, self.head_hidden, self.dtype,
                        name='head')(z_BxD)
      return logits_BxC, aux

    per_modality = {}
    for m, (tokens, mask) in encoded.items():
      per_modality[m] = Head(self.num_classes, self.head_hidden, self.dtype,
                             name=f'head_{m}')(layers.masked_mean(tokens, mask))
      aux[f'{m}/logits'] = per_modality[m]
    logits_BxC = self._fusion()(per_modality, present, train=train)
    return logits_BxC.astype(jnp.float32), aux  # f32, as every Head gives


def check_config(model_config):
  """Fails in one sentence on an unknown name or option in `config.model`."""
  fusion_lib.make_fusion(model_config.fusion,
                         **dict(model_config.get('fusion_kwargs') or {}))
  for m, c in model_config.encoders.items():
    if 'name' not in c:
      raise errors.UserError(
          f'model.encoders.{m} has no name; set e.g. '
          f'--config.model.encoders.{m}.name=mlp.')
    encoders_lib.make_encoder(**c)
  if model_config.get('dtype', 'float32') not in DTYPES:
    raise errors.unknown_name('model.dtype', model_config.dtype, DTYPES)


def from_config(model_config, num_classes: int) -> MultimodalModel:
  """The model that `config.model` describes, for `num_classes` classes."""
  check_config(model_config)
  return MultimodalModel(
      encoders={m: dict(c) for m, c in model_config.encoders.items()},
      fusion=model_config.fusion,
      num_classes=num_classes,
      fusion_kwargs=dict(model_config.get('fusion_kwargs') or {}),
      early_encoder=dict(model_config.get('early_encoder') or {}),
      head_hidden=tuple(model_config.get('head_hidden') or ()),
      remat=bool(model_config.get('remat', False)),
      dtype=DTYPES[model_config.get('dtype', 'float32')])
