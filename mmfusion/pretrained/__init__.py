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

from mmfusion.runtime import errors

LOADERS = {  # encoder name -> its loader module (imported when used)
    'bert': 'mmfusion.pretrained.bert',
    'efficientnet_lite': 'mmfusion.pretrained.efficientnet',
    'speech_embedding': 'mmfusion.pretrained.speech_embedding',
    'whisper': 'mmfusion.pretrained.whisper',
}
RUN_OPTIONS = ('checkpoint', 'finetune', 'lr_scale', 'lora_rank')
FINETUNE = ('full', 'frozen', 'lora')
LORA_RANK = 8  # the rank of LoRA's updates unless lora_rank says
TRAINABLE_WHEN_FROZEN = 'proj'  # the new projection a frozen encoder keeps
_ENCODER = re.compile(r'encoder_(.+)')  # models.MultimodalModel's names


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
    if key in out and out[key] != value:
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


def lr_factors(params, encoders) -> dict:
  """Each leaf's learning-rate factor: its encoder's `lr_scale`, else 1."""
  paths = _encoder_paths(params, encoders)

  def factor(path, _):
    keys = tuple(getattr(k, 'key', k) for k in path)
    for prefix, m in paths.items():
      if keys[:len(prefix)] == prefix:
        return float(encoders[m].get('lr_scale', 1.0))
    return 1.0

  return jax.tree_util.tree_map_with_path(factor, params)


def frozen_leaves(params, encoders) -> set:
  """The key paths of the leaves `labels` freezes."""
  flat = jax.tree_util.tree_flatten_with_path(labels(params, encoders))[0]
  return {tuple(getattr(k, 'key', k) for k in path)
          for path, label in flat if label == 'frozen'}
