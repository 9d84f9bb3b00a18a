"""ViT and CLIP image-tower checkpoints -> `encoders.hf_vit.HfViT` parameters,
offline.

A checkpoint is a folder as Hugging Face's `save_pretrained` writes it
(`config.json`, `model.safetensors`) of a `ViTModel` or
`ViTForImageClassification` (model_type 'vit'; the `vit.` prefix stripped,
`classifier.*` and `pooler.*` dropped), or of a CLIP image tower: a
`CLIPModel` ('clip': its `vision_model.*`) or a `CLIPVisionModel` /
`CLIPVisionModelWithProjection` ('clip_vision_model'). Nothing is ever
downloaded. `options` reads the sizes and the CLIP switches from
`config.json` (`hidden_act` and `layer_norm_eps` default to the family's HF
defaults when absent), and `mean`, `std` and `resize` from
`preprocessor_config.json` when the folder has one (else the family's
processor defaults). `tensors` renames the safetensors to the module's flat
names and layouts; `load` fills a template with `weights.fill`.
Legend: E hidden width, N heads, K width per head, P patch size, C channels.
"""

import json
import pathlib
import re
from typing import Sequence

import numpy as np
from safetensors import numpy as safetensors_np

from mmfusion.encoders import hf_vit
from mmfusion.pretrained import weights
from mmfusion.runtime import errors

FILES = ('config.json', 'model.safetensors')  # what `save_pretrained` writes
MODEL_TYPES = ('vit', 'clip', 'clip_vision_model')
# PIL's resample codes in preprocessor_config.json -> `HfViT.resize`.
_RESAMPLE = {0: 'nearest', 1: 'lanczos3', 2: 'bilinear', 3: 'bicubic'}
# config.json key -> `HfViT` option, for ViT and CLIP vision configs alike.
_OPTIONS = {'hidden_size': 'hidden_size', 'num_hidden_layers': 'num_layers',
            'num_attention_heads': 'num_heads',
            'intermediate_size': 'mlp_dim', 'image_size': 'image_size',
            'patch_size': 'patch_size'}
# What differs between the families: defaults of absent keys, fixed options.
_FAMILY = {
    'vit': dict(hidden_act='gelu', layer_norm_eps=1e-12, pre_norm=False,
                patch_bias=True, mean=hf_vit.VIT_MEAN, std=hf_vit.VIT_STD,
                resize='bilinear'),
    'clip': dict(hidden_act='quick_gelu', layer_norm_eps=1e-5, pre_norm=True,
                 patch_bias=False, mean=hf_vit.CLIP_MEAN, std=hf_vit.CLIP_STD,
                 resize='bicubic'),
}
# Tensors an image encoder does not use: heads, the other CLIP tower, the
# projections (`clip.towers` reads those) and position-id buffers.
_IGNORED = re.compile(r'(classifier\.|pooler\.|text_model\.|text_projection\.'
                      r'|visual_projection\.|logit_scale$|.*position_ids$)')
_PREFIXES = ('vit.', 'vision_model.')
# The layers of both CLIP towers (HF name, prefix stripped -> Flax name).
CLIP_LAYER_RENAMES = (
    (r'encoder\.layers\.(\d+)\.layer_norm1\.', r'layer_\1/ln_1/'),
    (r'encoder\.layers\.(\d+)\.self_attn\.q_proj\.',
     r'layer_\1/attention/query/'),
    (r'encoder\.layers\.(\d+)\.self_attn\.k_proj\.',
     r'layer_\1/attention/key/'),
    (r'encoder\.layers\.(\d+)\.self_attn\.v_proj\.',
     r'layer_\1/attention/value/'),
    (r'encoder\.layers\.(\d+)\.self_attn\.out_proj\.',
     r'layer_\1/attention/out/'),
    (r'encoder\.layers\.(\d+)\.layer_norm2\.', r'layer_\1/ln_2/'),
    (r'encoder\.layers\.(\d+)\.mlp\.fc1\.', r'layer_\1/mlp_in/'),
    (r'encoder\.layers\.(\d+)\.mlp\.fc2\.', r'layer_\1/mlp_out/'),
)
_RENAMES = CLIP_LAYER_RENAMES + (
    # ViT (the names save_pretrained writes, as on the Hub)
    (r'embeddings\.cls_token$', 'cls_token'),
    (r'embeddings\.position_embeddings$', 'position_embeddings'),
    (r'embeddings\.patch_embeddings\.projection\.', 'patch_embed/'),
    (r'encoder\.layer\.(\d+)\.layernorm_before\.', r'layer_\1/ln_1/'),
    (r'encoder\.layer\.(\d+)\.attention\.attention\.(query|key|value)\.',
     r'layer_\1/attention/\2/'),
    (r'encoder\.layer\.(\d+)\.attention\.output\.dense\.',
     r'layer_\1/attention/out/'),
    (r'encoder\.layer\.(\d+)\.layernorm_after\.', r'layer_\1/ln_2/'),
    (r'encoder\.layer\.(\d+)\.intermediate\.dense\.', r'layer_\1/mlp_in/'),
    (r'encoder\.layer\.(\d+)\.output\.dense\.', r'layer_\1/mlp_out/'),
    (r'layernorm\.', 'final_ln/'),
    # CLIP vision
    (r'embeddings\.class_embedding$', 'cls_token'),
    (r'embeddings\.position_embedding\.weight$', 'position_embeddings'),
    (r'embeddings\.patch_embedding\.', 'patch_embed/'),
    (r'pre_layrnorm\.', 'pre_ln/'),
    (r'post_layernorm\.', 'final_ln/'),
)


def folder(checkpoint: str, files: Sequence[str] = FILES) -> pathlib.Path:
  """The folder `checkpoint` names, checked to hold `files`."""
  return weights.hf_folder(checkpoint, files)


def config(checkpoint: str, model_types: Sequence[str] = MODEL_TYPES,
           what: str = 'the ViT port') -> tuple[str, dict]:
  """(model_type, config.json) of `checkpoint`, refused unless a model type
  in `model_types` (`what` names the port in the error)."""
  path = folder(checkpoint) / 'config.json'
  out = json.loads(path.read_text())
  model_type = out.get('model_type')
  if model_type not in model_types:
    raise errors.UserError(
        f'{path} is a {model_type!r} model, which {what} does not implement; '
        f'use one of: {", ".join(sorted(model_types))}.')
  return model_type, out


def sizes(path, cfg: dict, keys: dict, family: dict) -> dict:
  """{option: cfg[key]} for `keys`, with `hidden_act` -> `activation` and
  `layer_norm_eps` (defaults from `family`); an absent size is one sentence."""
  absent = [k for k in keys if cfg.get(k) is None]
  if absent:
    raise errors.UserError(
        f'{path} lacks {", ".join(absent)}; write it with save_pretrained, '
        f'which records every size.')
  act = cfg.get('hidden_act', family['hidden_act'])
  if act not in hf_vit.ACTIVATIONS:
    raise errors.UserError(
        f'{path} sets hidden_act={act!r}, which the port does not implement; '
        f'it runs {" or ".join(sorted(hf_vit.ACTIVATIONS))}.')
  return {option: cfg[key] for key, option in keys.items()} | {
      'activation': act,
      'layer_norm_eps': cfg.get('layer_norm_eps', family['layer_norm_eps'])}


def _processor(path: pathlib.Path, family: dict) -> dict:
  """`mean`, `std`, `resize` from preprocessor_config.json, else `family`'s."""
  out = {k: family[k] for k in ('mean', 'std', 'resize')}
  file = path / 'preprocessor_config.json'
  if not file.is_file():
    return out
  processor = json.loads(file.read_text())
  resample = processor.get('resample')
  if resample is not None and resample not in _RESAMPLE:
    raise errors.UserError(
        f'{file} sets resample={resample!r}, which the port does not '
        f'implement; use one of PIL\'s {sorted(_RESAMPLE)}.')
  return out | {
      'mean': tuple(float(v) for v in processor.get('image_mean', out['mean'])),
      'std': tuple(float(v) for v in processor.get('image_std', out['std'])),
      'resize': _RESAMPLE.get(resample, out['resize'])}


def _square(v):
  """An int, or an [H, W] pair with H == W as one int; anything else as is."""
  return v[0] if isinstance(v, (list, tuple)) and len(set(v)) == 1 else v


def options(checkpoint: str) -> dict:
  """The `HfViT` options (sizes, CLIP switches, normalisation) of the
  checkpoint's image model."""
  model_type, cfg = config(checkpoint)
  path = folder(checkpoint) / 'config.json'
  family = _FAMILY['vit' if model_type == 'vit' else 'clip']
  if model_type == 'clip':
    cfg, path = cfg.get('vision_config') or {}, f'{path} (vision_config)'
  cfg = cfg | {k: _square(cfg.get(k)) for k in ('image_size', 'patch_size')}
  unsupported = [f'{k}={cfg[k]!r}' for k, ok in (
      ('image_size', isinstance(cfg['image_size'], (int, type(None)))),
      ('patch_size', isinstance(cfg['patch_size'], (int, type(None)))),
      ('num_channels', cfg.get('num_channels', 3) == 3),
      ('qkv_bias', cfg.get('qkv_bias', True) is True)) if not ok]
  if unsupported:
    raise errors.UserError(
        f'{path} sets {", ".join(unsupported)}, which the port does not '
        f'implement; it runs square images and patches, 3 channels and '
        f'biased query/key/value.')
  return sizes(path, cfg, _OPTIONS, family) | {
      k: family[k] for k in ('pre_norm', 'patch_bias')} | _processor(
          folder(checkpoint), family)


def to_flax(name: str, x: np.ndarray, renames, num_heads: int
            ) -> tuple[str, np.ndarray]:
  """One HF tensor under its Flax name and layout (Dense [out, in] -> [in,
  out], attention split into heads, conv OIHW -> HWIO, LayerNorm weight ->
  scale); names no rename matches come back unchanged."""
  for pattern, repl in renames:
    new, n = re.subn(f'^{pattern}', repl, name)
    if n:
      break
  else:
    return name, x
  if new == 'cls_token':
    return new, x.reshape(-1)  # ViT's is [1, 1, E]
  if new == 'position_embeddings':
    return new, x.reshape(x.shape[-2:])  # ViT's is [1, T, E]
  module = new.split('/')[-2]
  if new.endswith('/weight') and (module.startswith('ln_') or
                                  module.endswith('_ln')):
    return new[:-len('weight')] + 'scale', x
  if new.endswith('/embedding') or not new.endswith(('/weight', '/bias')):
    return new, x  # unknown leaf names reach `fill`, which names them
  if new.endswith('/bias'):
    split = '/attention/' in new and not new.endswith('/out/bias')
    return new, (x.reshape(num_heads, -1) if split else x)  # q/k/v bias [N, K]
  new = new[:-len('weight')] + 'kernel'
  if x.ndim == 4:
    return new, x.transpose(2, 3, 1, 0)  # [E, C, P, P] -> [P, P, C, E]
  out_dim, in_dim = x.shape
  if '/attention/out/' in new:
    return new, x.T.reshape(num_heads, in_dim // num_heads, out_dim)  # [N,K,E]
  if '/attention/' in new:
    return new, x.T.reshape(in_dim, num_heads, out_dim // num_heads)  # [E,N,K]
  return new, x.T


def read(checkpoint: str) -> dict[str, np.ndarray]:
  """Every tensor of the checkpoint's `model.safetensors`, by HF name."""
  return safetensors_np.load_file(folder(checkpoint) / 'model.safetensors')


def tensors(checkpoint: str, raw: dict | None = None
            ) -> dict[str, np.ndarray]:
  """`model.safetensors` (or `raw`, its tensors when already `read`) under
  the flat parameter names of `HfViT`."""
  num_heads = options(checkpoint)['num_heads']
  out = {}
  for name, x in (read(checkpoint) if raw is None else raw).items():
    name = next((name[len(p):] for p in _PREFIXES if name.startswith(p)), name)
    if not _IGNORED.match(name):
      new, x = to_flax(name, x, _RENAMES, num_heads)
      out[new] = x
  return out


def load(checkpoint: str, template, raw: dict | None = None):
  """`template` (the `HfViT` parameters: arrays, or ShapeDtypeStructs when
  there is no `proj`) filled from `checkpoint`; `proj` keeps its values."""
  return weights.fill(template, tensors(checkpoint, raw), source=checkpoint,
                      allow_missing=('proj/',))
