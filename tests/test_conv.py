"""mmfusion.nn.kernels.cpu_conv: the same values and gradients as nn.Conv,
nn.max_pool and nn.GroupNorm, and the same parameters."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmfusion.nn.kernels import cpu_conv


def _close(a, b, tol=1e-4):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    scale = max(1.0, float(jnp.max(jnp.abs(y))))
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=0,
                               atol=tol * scale)


def _value_and_grads(module, params, x):
  """Output, and gradients wrt params and input of a loss that weights every
  output element differently (so a misplaced gradient cannot cancel)."""
  def loss(p, x_):
    y = module.apply({'params': p}, x_)
    weights = jnp.cos(jnp.arange(y.size, dtype=y.dtype)).reshape(y.shape)
    return jnp.sum(y * weights)
  return jax.jit(lambda p, x_: (module.apply({'params': p}, x_),
                                jax.grad(loss, (0, 1))(p, x_)))(params, x)


@pytest.mark.parametrize('kernel,strides,padding,hw', [
    ((3, 3), 1, 'SAME', (9, 7)), ((3, 3), 2, 'SAME', (9, 8)),
    ((3, 3), 1, 'VALID', (8, 8)), ((3, 3), 2, 'VALID', (9, 7)),
    ((4, 4), 4, 'VALID', (9, 8)), ((1, 1), 2, 'SAME', (7, 7)),
    ((2, 3), (1, 2), 'SAME', (6, 9))])
def test_conv_matches_nn_conv(kernel, strides, padding, hw):
  # 5 examples in filter-gradient chunks of 2: the last chunk is short.
  x = jax.random.normal(jax.random.PRNGKey(0), (5, *hw, 8))
  ours = cpu_conv.Conv(6, kernel, strides, padding, filter_grad_chunk=2)
  ref = nn.Conv(6, kernel, strides, padding)
  params = ref.init(jax.random.PRNGKey(1), x)['params']
  ours_params = ours.init(jax.random.PRNGKey(1), x)['params']
  # Same parameter names, shapes and initial values.
  assert jax.tree.map(jnp.shape, ours_params) == jax.tree.map(jnp.shape, params)
  _close(ours_params, params, 0)
  _close(_value_and_grads(ours, params, x), _value_and_grads(ref, params, x))


def test_filter_gradient_is_summed_over_chunks():
  """No backend test decides it: 5 examples in chunks of 2 are three filter
  gradients where `filter_grad_chunk=0` is one."""
  x = jax.random.normal(jax.random.PRNGKey(0), (5, 6, 6, 8))

  def convs_in_grad(chunk):
    conv = cpu_conv.Conv(4, (3, 3), filter_grad_chunk=chunk)
    params = conv.init(jax.random.PRNGKey(1), x)['params']
    loss = lambda p: jnp.sum(conv.apply({'params': p}, x))
    return str(jax.make_jaxpr(jax.grad(loss))(params)).count(
        'conv_general_dilated')

  assert convs_in_grad(2) > convs_in_grad(0) == convs_in_grad(8)


@pytest.mark.parametrize('channels,kernel,strides,padding', [
    (1, (3, 3), 1, 'SAME'), (3, (3, 3), 2, 'SAME'), (4, (3, 3), 1, 'VALID'),
    (2, (2, 3), (1, 2), ((2, 0), (1, 1))), (1, (4, 4), 4, 'VALID')])
def test_conv_taps_forward_matches_nn_conv(channels, kernel, strides, padding):
  x = jax.random.normal(jax.random.PRNGKey(0), (3, 9, 8, channels))
  ours = cpu_conv.Conv(5, kernel, strides, padding, taps=True)
  ref = nn.Conv(5, kernel, strides, padding)
  params = ref.init(jax.random.PRNGKey(1), x)['params']
  _close(_value_and_grads(ours, params, x), _value_and_grads(ref, params, x))
  # The forward is the sum over taps: no convolution left in it.
  forward = str(jax.make_jaxpr(lambda p: ours.apply({'params': p}, x))(params))
  assert 'conv_general_dilated' not in forward
  assert 'conv_general_dilated' in str(jax.make_jaxpr(
      lambda p: cpu_conv.Conv(5, kernel, strides, padding, taps=False).apply(
          {'params': p}, x))(params))


def test_conv_without_bias_and_in_bfloat16():
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 6, 6, 4))
  ours = cpu_conv.Conv(3, (3, 3), use_bias=False, dtype=jnp.bfloat16)
  ref = nn.Conv(3, (3, 3), use_bias=False, dtype=jnp.bfloat16)
  params = ref.init(jax.random.PRNGKey(1), x)['params']
  assert set(params) == {'kernel'}
  y = ours.apply({'params': params}, x)
  assert y.dtype == jnp.bfloat16
  _close(y.astype(jnp.float32),
         ref.apply({'params': params}, x).astype(jnp.float32), 2e-2)


@pytest.mark.parametrize('padding,hw', [('SAME', (8, 6)), ('SAME', (7, 5)),
                                        ('VALID', (7, 5))])
def test_max_pool_matches_flax_including_ties(padding, hw):
  # Quantised values: many windows hold their maximum twice or more, and the
  # gradient must still go to the first one only, as XLA's does.
  x = jnp.round(2 * jax.random.normal(jax.random.PRNGKey(0), (2, *hw, 3))) / 2
  def loss(pool):
    return lambda x_: jnp.sum(pool(x_) * jnp.cos(jnp.arange(
        pool(x_).size, dtype=jnp.float32).reshape(pool(x_).shape)))
  ours = lambda x_: cpu_conv.max_pool(x_, (2, 2), (2, 2), padding)
  ref = lambda x_: nn.max_pool(x_, (2, 2), (2, 2), padding)
  both = jax.jit(lambda x_: (ours(x_), ref(x_), jax.grad(loss(ours))(x_),
                             jax.grad(loss(ref))(x_)))
  y, y_ref, dx, dx_ref = both(x)
  np.testing.assert_array_equal(y, y_ref)
  np.testing.assert_array_equal(dx, dx_ref)


def test_max_pool_other_windows_fall_back_to_flax():
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 7, 7, 3))
  np.testing.assert_array_equal(
      cpu_conv.max_pool(x, (3, 3), (2, 2), 'SAME'),
      nn.max_pool(x, (3, 3), (2, 2), 'SAME'))


@pytest.mark.parametrize('shape,groups', [((3, 7, 5, 8), 4), ((2, 6, 16), 8),
                                          ((2, 4, 4, 6), 1)])
def test_group_norm_matches_flax(shape, groups):
  x = 3 * jax.random.normal(jax.random.PRNGKey(0), shape) + 1
  ours = cpu_conv.GroupNorm(num_groups=groups)
  ref = nn.GroupNorm(num_groups=groups)
  params = ref.init(jax.random.PRNGKey(1), x)['params']
  params = jax.tree.map(
      lambda p: p + 0.1 * jax.random.normal(jax.random.PRNGKey(2), p.shape),
      params)
  assert (jax.tree.map(jnp.shape, ours.init(jax.random.PRNGKey(1), x)['params'])
          == jax.tree.map(jnp.shape, params))
  _close(_value_and_grads(ours, params, x), _value_and_grads(ref, params, x))


@pytest.mark.parametrize('shared_input,channels', [(False, 8), (True, 8),
                                                    (True, 1), (False, 3)])
def test_conv_vmapped_over_members_matches_each_member(shared_input, channels):
  """Members with their own kernels (config.vmap): the custom batching rule
  runs them one by one and must give each member's own values and grads
  (with few input channels, through the taps forward)."""
  k = 3
  xs = jax.random.normal(jax.random.PRNGKey(0), (k, 12, 6, 6, channels))
  ours = cpu_conv.Conv(4, (3, 3), filter_grad_chunk=4, taps=True)
  params = jax.vmap(lambda r: ours.init(r, xs[0])['params'])(
      jax.random.split(jax.random.PRNGKey(1), k))
  in_axes = (0, None) if shared_input else (0, 0)
  x_in = xs[0] if shared_input else xs
  got = jax.vmap(lambda p, x: _value_and_grads(ours, p, x),
                 in_axes=in_axes)(params, x_in)
  ref = nn.Conv(4, (3, 3))
  for i in range(k):
    want = _value_and_grads(ref, jax.tree.map(lambda v: v[i], params),
                            xs[0] if shared_input else xs[i])
    _close(jax.tree.map(lambda v: v[i], got), want)


def test_group_norm_vmapped_over_members_matches_each_member():
  """Its written-out gradient under vmap (config.vmap members), per member."""
  k = 3
  xs = 2.0 + jax.random.normal(jax.random.PRNGKey(0), (k, 4, 5, 3, 8))
  ours, ref = cpu_conv.GroupNorm(4), nn.GroupNorm(4)
  nudged = lambda r: jax.tree.map(lambda v: v + jax.random.normal(r, v.shape),
                                  ref.init(r, xs[0])['params'])
  params = jax.vmap(nudged)(jax.random.split(jax.random.PRNGKey(1), k))
  got = jax.vmap(lambda p, x: _value_and_grads(ours, p, x))(params, xs)
  for i in range(k):
    want = _value_and_grads(ref, jax.tree.map(lambda v: v[i], params), xs[i])
    _close(jax.tree.map(lambda v: v[i], got), want)


@pytest.mark.parametrize('kernel,strides,padding,hw,batch', [
    ((3, 3), 1, 'SAME', (9, 7), 5), ((3, 3), 2, 'SAME', (9, 8), 8),
    ((5, 5), 1, 'SAME', (7, 7), 6), ((5, 5), 2, 'SAME', (10, 9), 3),
    ((3, 3), 2, 'VALID', (9, 7), 4)])
def test_depthwise_conv_matches_grouped_nn_conv(kernel, strides, padding, hw,
                                                batch):
  # Batches of 5 and 3 have no chunk of 4: the filter gradient takes 1 or 3.
  x = jax.random.normal(jax.random.PRNGKey(0), (batch, *hw, 6))
  ours = cpu_conv.DepthwiseConv(6, kernel, strides, padding)
  ref = nn.Conv(6, kernel, strides, padding, feature_group_count=6)
  params = ref.init(jax.random.PRNGKey(1), x)['params']
  ours_params = ours.init(jax.random.PRNGKey(1), x)['params']
  assert jax.tree.map(jnp.shape, ours_params) == jax.tree.map(jnp.shape, params)
  _close(ours_params, params, 0)
  _close(_value_and_grads(ours, params, x), _value_and_grads(ref, params, x))


def test_depthwise_conv_vmapped_over_members_matches_each_member():
  k = 3
  xs = jax.random.normal(jax.random.PRNGKey(0), (k, 8, 6, 6, 5))
  ours = cpu_conv.DepthwiseConv(5, (3, 3), 2, use_bias=False)
  params = jax.vmap(lambda r: ours.init(r, xs[0])['params'])(
      jax.random.split(jax.random.PRNGKey(1), k))
  got = jax.vmap(lambda p, x: _value_and_grads(ours, p, x))(params, xs)
  ref = nn.Conv(5, (3, 3), 2, feature_group_count=5, use_bias=False)
  for i in range(k):
    want = _value_and_grads(ref, jax.tree.map(lambda v: v[i], params), xs[i])
    _close(jax.tree.map(lambda v: v[i], got), want)


def test_depthwise_conv_names_a_wrong_input_in_one_sentence():
  with pytest.raises(ValueError, match=r'takes \[B, H, W, 4\] inputs'):
    cpu_conv.DepthwiseConv(4, (3, 3)).init(jax.random.PRNGKey(0),
                                           jnp.zeros((2, 5, 5, 3)))
