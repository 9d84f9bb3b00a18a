"""Whisper checkpoints -> `encoders.whisper.WhisperEncoder` parameters, offline.

A checkpoint is a folder as Hugging Face's `save_pretrained` writes it for a
`WhisperModel` (tensors `encoder.*`) or a `WhisperForConditionalGeneration`
(`model.encoder.*`): `config.json` and `model.safetensors`. Nothing is ever
downloaded. `options` reads the encoder's sizes from `config.json`; `tensors`
drops the decoder (`decoder.*`, `model.decoder.*`) and the output head
(`proj_out.*`) by name and renames the encoder's tensors to the module's flat
parameter names under `encoder/` (Conv1d [O, C, 3] -> [3, 1, C, O], Dense
weights [out, in] -> [in, out], attention weights split into heads); any
other tensor keeps its name, so `weights.fill` reports it as unexpected.
Legend: D d_model, H heads, E head width, C channels in, O channels out.
"""

import json
import pathlib
import re

import numpy as np
from safetensors import numpy as safetensors_np

from mmfusion.pretrained import weights
from mmfusion.runtime import errors

FILES = ('config.json', 'model.safetensors')  # what `save_pretrained` writes
_OPTIONS = {  # config.json key -> `WhisperEncoder` option
    'd_model': 'd_model', 'encoder_layers': 'num_layers',
    'encoder_attention_heads': 'num_heads', 'encoder_ffn_dim': 'mlp_dim',
    'num_mel_bins': 'n_mels', 'max_source_positions': 'max_source_positions'}
_PREFIXES = ('model.encoder.', 'encoder.')  # ForConditionalGeneration, Model
_DROPPED = re.compile(r'(model\.)?decoder\.|proj_out\.')  # not the encoder's
_TENSOR = re.compile(r'(?:layers\.(\d+)\.)?(.+)\.(weight|bias)')
_LAYER = {  # HF module inside `layers.<i>.` -> Flax path inside `layer_<i>/`
    'self_attn.q_proj': 'attention/query',
    'self_attn.k_proj': 'attention/key',
    'self_attn.v_proj': 'attention/value',
    'self_attn.out_proj': 'attention/out',
    'self_attn_layer_norm': 'attention_ln', 'fc1': 'fc1', 'fc2': 'fc2',
    'final_layer_norm': 'mlp_ln'}
_TOP = ('conv1', 'conv2', 'layer_norm', 'embed_positions')


def folder(checkpoint: str) -> pathlib.Path:
  """The folder `checkpoint` names, checked to hold `FILES`."""
  return weights.hf_folder(checkpoint, FILES)


def options(checkpoint: str) -> dict:
  """The `WhisperEncoder` sizes of `config.json`."""
  path = folder(checkpoint) / 'config.json'
  config = json.loads(path.read_text())
  if config.get('model_type') != 'whisper':
    raise errors.UserError(
        f'{path} is a {config.get("model_type")!r} model, not a \'whisper\' '
        f'one; point the whisper encoder at a Whisper checkpoint.')
  if config.get('activation_function', 'gelu') != 'gelu':
    raise errors.UserError(
        f'{path} sets activation_function='
        f'{config["activation_function"]!r}, which the Whisper port does '
        f'not implement; it runs "gelu" (exact) as every Whisper does.')
  absent = [k for k in _OPTIONS if config.get(k) is None]
  if absent:
    raise errors.UserError(
        f'{path} lacks {", ".join(absent)}; write it with save_pretrained, '
        f'which records every size.')
  return {option: config[key] for key, option in _OPTIONS.items()}


def _flax(name: str, x: np.ndarray, num_heads: int):
  """One encoder tensor (prefix stripped) under its Flax name and layout;
  None for a name the port does not know."""
  match = _TENSOR.fullmatch(name)
  if not match:
    return None
  layer, module, kind = match.groups()
  if layer is not None and module in _LAYER:
    path = f'layer_{layer}/{_LAYER[module]}'
  elif layer is None and module in _TOP:
    path = module
  else:
    return None
  if module == 'embed_positions':
    return (path, x) if kind == 'weight' else None  # [P, D], no /weight
  heads = '/attention/' in path and not path.endswith('/out')  # q, k, v
  if kind == 'bias':
    return f'{path}/bias', x.reshape(num_heads, -1) if heads else x  # [H, E]
  if module.endswith('layer_norm'):
    return f'{path}/scale', x
  if module.startswith('conv'):
    return f'{path}/kernel', x.transpose(2, 1, 0)[:, None]  # [3, 1, C, O]
  out_dim, in_dim = x.shape
  if path.endswith('attention/out'):
    return f'{path}/kernel', x.T.reshape(num_heads, in_dim // num_heads,
                                         out_dim)  # [H, E, D]
  if heads:
    return f'{path}/kernel', x.T.reshape(in_dim, num_heads,
                                         out_dim // num_heads)  # [D, H, E]
  return f'{path}/kernel', x.T


def tensors(checkpoint: str) -> dict[str, np.ndarray]:
  """`model.safetensors`' encoder under the flat parameter names of
  `WhisperEncoder`; unknown tensors under their own names."""
  num_heads = options(checkpoint)['num_heads']
  out = {}
  for name, x in safetensors_np.load_file(
      folder(checkpoint) / 'model.safetensors').items():
    if _DROPPED.match(name):
      continue
    prefix = next((p for p in _PREFIXES if name.startswith(p)), None)
    renamed = prefix and _flax(name[len(prefix):], x, num_heads)
    if renamed:
      out[f'encoder/{renamed[0]}'] = renamed[1]
    else:
      out[name] = x
  return out


def load(checkpoint: str, template):
  """`template` (the `WhisperEncoder` parameters: arrays, or
  ShapeDtypeStructs when there is no `proj`) filled from `checkpoint`;
  `proj` keeps its values."""
  return weights.fill(template, tensors(checkpoint), source=checkpoint,
                      allow_missing=('proj/',))
