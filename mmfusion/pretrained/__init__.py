"""Pretrained encoders: weights read offline, and how each encoder trains.

An encoder's config may carry three keys that are about the run, not the
module (`RUN_OPTIONS`); the model strips them before building the module:

  checkpoint  where its weights come from: a name in its loader's PACKAGED
              (weights that ship in a pip package) or a local path (a Hugging
              Face `save_pretrained` folder, a `.pth`, an ONNX folder). Unset:
              random initialisation, as every other encoder.
  finetune    'full' (default): every parameter trains; 'frozen': none of the
              checkpoint's parameters train (no gradients reach them, no
              optimizer state is kept for them); a new `proj` to the config's
              `features` still trains. 'lora': frozen, plus low-rank updates
              of its attention projections that train (`lora.py`).
  lr_scale    multiplies the learning rate of the encoder's trainable
              parameters (e.g. 0.1 for a pretrained one under a new head).
  layer_decay layer-wise learning-rate decay (Clark et al. 2020): each
              numbered layer (`layer_i`, `blocks_i`) below the last learns
              at this factor per layer, the embeddings below them all.
  lora_rank   the rank of the LoRA updates (default LORA_RANK).

A linear probe is every encoder frozen with `model.fusion=concat` and no
hidden head layer. `LOADERS` maps an encoder name to its loader module, which
has `options(checkpoint)` (the module options the checkpoint fixes) and
`load(checkpoint, template)` (the encoder's parameters, checked by
`weights.fill`).
"""

import importlib
import re

import flax
import jax
import numpy as np

from mmfusion.nn import registry
from mmfusion.runtime import errors

LOADERS = {  # encoder name -> its loader module (imported when used)
    'bert': 'mmfusion.pretrained.bert',
    'clip_text': 'mmfusion.pretrained.clip',
    'clip_vision': 'mmfusion.pretrained.hf_vit',
    'hf_vit': 'mmfusion.pretrained.hf_vit',
    'efficientnet_lite': 'mmfusion.pretrained.efficientnet',
    'speech_embedding': 'mmfusion.pretrained.speech_embedding',
    'whisper': 'mmfusion.pretrained.whisper',
}
RUN_OPTIONS = ('checkpoint', 'finetune', 'lr_scale', 'layer_decay',
               'lora_rank')
FINETUNE = ('full', 'frozen', 'lora')
LORA_RANK = 8  # the rank of LoRA's updates unless lora_rank says
TRAINABLE_WHEN_FROZEN = 'proj'  # the new projection a frozen encoder keeps
_ENCODER = re.compile(r'encoder_(.+)')  # models.MultimodalModel's names
_LAYER = re.compile(r'(?:layer|blocks)_(\d+)')  # the ports' numbered layers
# Parts of the ports after their numbered layers: decayed like the last one.
AFTER_LAYERS = ('layer_norm', 'conv_head', 'bn1', 'post_layernorm')


def loader(name: str):
  """The loader module of encoder `name`."""
  if name not in LOADERS:
    raise errors.UserError(
        f'encoder {name!r} has no pretrained weights to load; set a '
        f'checkpoint only on {", ".join(sorted(LOADERS))}.')
  return importlib.import_module(LOADERS[name])


def check(where: str, cfg) -> None:
  """One sentence on a bad run option of the encoder config at `where`."""
  finetune = cfg.get('finetune', 'full')
  if finetune not in FINETUNE:
    raise errors.unknown_name(f'{where}.finetune', finetune, FINETUNE)
  scale = cfg.get('lr_scale', 1.0)
  if isinstance(scale, bool) or not isinstance(scale, (int, float)) or (
      scale <= 0):
    raise errors.UserError(
        f'{where}.lr_scale={scale!r} must be a positive number (1.0: the '
        'run\'s learning rate).')
  decay = cfg.get('layer_decay', 1.0)
  if isinstance(decay, bool) or not isinstance(decay, (int, float)) or not (
      0 < decay <= 1):
    raise errors.UserError(
        f'{where}.layer_decay={decay!r} must be in (0, 1] (1.0: no decay).')
  rank = cfg.get('lora_rank', LORA_RANK)
  if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
    raise errors.UserError(
        f'{where}.lora_rank={rank!r} must be a positive int.')
  if cfg.get('checkpoint'):
    loader(cfg['name'])


def module_options(cfg) -> dict:
  """The encoder config without its run options, with the options its
  checkpoint fixes filled in; a set option that disagrees with the
  checkpoint is one sentence."""
  out = {k: v for k, v in dict(cfg).items() if k not in RUN_OPTIONS}
  if not cfg.get('checkpoint'):
    return out
  for key, value in loader(cfg['name']).options(cfg['checkpoint']).items():
    if key in out and registry.freeze(out[key]) != registry.freeze(value):
      raise errors.UserError(
          f'encoder {cfg["name"]!r} option {key}={out[key]!r} disagrees with '
          f'its checkpoint {cfg["checkpoint"]!r} ({key}={value!r}); drop the '
          'option or use a checkpoint of that size.')
    out[key] = value
  return out


def _encoder_paths(params, encoders) -> dict:
  """{path of an `encoder_<m>` subtree: m} for every encoder in `encoders`
  found anywhere in `params` (a two-tower model nests them)."""
  found = {}

  def visit(tree, path):
    for key, sub in tree.items():
      match = _ENCODER.fullmatch(key)
      if match and match.group(1) in encoders:
        found[path + (key,)] = match.group(1)
      elif hasattr(sub, 'items'):
        visit(sub, path + (key,))

  visit(flax.core.unfreeze(params), ())
  return found


def load_into(params, encoders, *, members: int = 0):
  """`params` with each encoder that names a checkpoint filled from it.

  `encoders`: modality -> encoder config; `members` > 0 when every leaf has a
  leading axis of that many vmapped members (each gets the same weights).
  Leaves keep their arrays' shardings.
  """
  params = flax.core.unfreeze(params)
  for path, m in _encoder_paths(params, encoders).items():
    cfg = encoders[m]
    if not cfg.get('checkpoint'):
      continue
    parent = params
    for key in path[:-1]:
      parent = parent[key]
    subtree = parent[path[-1]]
    one = jax.tree.map(lambda x: np.asarray(x[0] if members else x), subtree)
    loaded = loader(cfg['name']).load(cfg['checkpoint'], one)
    parent[path[-1]] = jax.tree.map(
        lambda new, old: jax.device_put(
            np.broadcast_to(new, old.shape) if members else new,
            getattr(old, 'sharding', None)), loaded, subtree)
  return params


def labels(params, encoders) -> dict:
  """'frozen' or 'train' for every leaf of `params`: a frozen encoder's
  leaves are frozen, all but its `proj`."""
  paths = _encoder_paths(params, encoders)

  def label(path, _):
    keys = tuple(getattr(k, 'key', k) for k in path)
    for prefix, m in paths.items():
      if keys[:len(prefix)] == prefix:
        frozen = encoders[m].get('finetune', 'full') in ('frozen', 'lora')
        rest = keys[len(prefix):]
        if frozen and rest[:1] != (TRAINABLE_WHEN_FROZEN,):
          return 'frozen'
    return 'train'

  return jax.tree_util.tree_map_with_path(label, params)


def _depths(subtree) -> tuple[dict, int]:
  """({key path: layer index} of the leaves under a numbered layer key, the
  number of layers) of one encoder's parameters."""
  flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(subtree))
  found = {}
  for path in flat:
    index = next((int(m.group(1)) for m in map(_LAYER.fullmatch, path) if m),
                 None)
    if index is not None:
      found[path] = index
  return found, 1 + max(found.values(), default=-1)


def lr_factors(params, encoders) -> dict:
  """Each leaf's learning-rate factor: its encoder's `lr_scale`, times
  `layer_decay` ** (layers above it) when that is set (Clark et al. 2020):
  the last layer 1, layer i decay^(L-1-i), what comes before the layers
  (embeddings, stems) decay^L, a new `proj` or a head after them 1."""
  paths = _encoder_paths(params, encoders)
  depths = {}
  for prefix, m in paths.items():
    subtree = params
    for key in prefix:
      subtree = subtree[key]
    depths[prefix] = _depths(subtree)

  def factor(path, _):
    keys = tuple(getattr(k, 'key', k) for k in path)
    for prefix, m in paths.items():
      if keys[:len(prefix)] == prefix:
        scale = float(encoders[m].get('lr_scale', 1.0))
        decay = float(encoders[m].get('layer_decay', 1.0))
        if decay == 1.0:
          return scale
        index, layers = depths[prefix]
        rest = keys[len(prefix):]
        if rest in index:
          return scale * decay ** (layers - 1 - index[rest])
        after = any(k in (TRAINABLE_WHEN_FROZEN,) + AFTER_LAYERS
                    for k in rest)
        return scale * (1.0 if after else decay ** layers)
    return 1.0

  return jax.tree_util.tree_map_with_path(factor, params)

