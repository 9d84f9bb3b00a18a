"""Attention kernels and the Transformer block built from them.

`cpu_attention.dot_product_attention` (XLA_CPU) and `stock.attention` (FLAX)
must give flax's `nn.dot_product_attention` values and gradients; a `Block`
has the same parameters and outputs with either kernel set.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmfusion.nn import kernels, layers
from mmfusion.nn.kernels import cpu_attention, stock

ATTENTIONS = {'cpu_attention': cpu_attention.dot_product_attention,
              'stock': stock.attention}


def _qkv_mask(t=5, s=7):
  rng = np.random.default_rng(0)
  q, k, v = (jnp.asarray(rng.standard_normal((3, n, 2, 4)), jnp.float32)
             for n in (t, s, s))
  mask = rng.random((3, 1, t, s)) > 0.4
  mask[1, 0, 2] = False  # a query that sees no key: flax attends uniformly
  return q, k, v, jnp.asarray(mask)


@pytest.mark.parametrize('name', sorted(ATTENTIONS))
def test_attention_matches_flax_values_and_gradients(name):
  q, k, v, mask = _qkv_mask()
  dout = jnp.cos(jnp.arange(q.size, dtype=jnp.float32).reshape(q.shape))
  ours = lambda *a: ATTENTIONS[name](*a, mask=mask)
  ref = lambda *a: nn.dot_product_attention(*a, mask=mask)
  y, vjp = jax.vjp(ours, q, k, v)
  y_ref, vjp_ref = jax.vjp(ref, q, k, v)
  np.testing.assert_allclose(y, y_ref, atol=1e-5)
  for g, g_ref in zip(vjp(dout), vjp_ref(dout)):
    np.testing.assert_allclose(g, g_ref, atol=1e-5)


def test_cpu_attention_gradient_materializes_its_transposes():
  """On every backend: the switch between kernels is `model.kernels`."""
  q, k, v, mask = _qkv_mask()
  dout = jnp.ones(q.shape, jnp.float32)
  backward = lambda attention: jax.jit(lambda *a: jax.vjp(
      lambda *b: attention(*b, mask=mask), *a)[1](dout)).lower(
          q, k, v).as_text()
  assert 'optimization_barrier' in backward(
      cpu_attention.dot_product_attention)
  assert 'optimization_barrier' not in backward(stock.attention)


@pytest.mark.parametrize('name', sorted(ATTENTIONS))
def test_attention_dropout_in_training_is_flax(name):
  q, k, v, mask = _qkv_mask()
  key = jax.random.PRNGKey(3)
  kwargs = dict(mask=mask, dropout_rng=key, dropout_rate=0.5,
                deterministic=False)
  np.testing.assert_array_equal(ATTENTIONS[name](q, k, v, **kwargs),
                                nn.dot_product_attention(q, k, v, **kwargs))


def test_block_gives_the_same_with_either_kernel_set():
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 6, 8))
  mask = jnp.array([[1, 1, 1, 1, 0, 0], [1] * 6], bool)
  flax_block = layers.Block(num_heads=2, mlp_dim=16)
  assert flax_block.kernels is kernels.FLAX  # the default
  cpu_block = flax_block.clone(kernels=kernels.XLA_CPU)
  params = jax.jit(flax_block.init)(jax.random.PRNGKey(1), x, mask)
  assert (jax.tree.map(jnp.shape, params) == jax.tree.map(
      jnp.shape, jax.eval_shape(cpu_block.init, jax.random.PRNGKey(1), x,
                                mask)))
  loss = lambda block: lambda p: jnp.sum(jnp.sin(block.apply(p, x, mask)))
  both = jax.jit(lambda p: [jax.value_and_grad(loss(b))(p)
                            for b in (flax_block, cpu_block)])
  want, got = both(params)
  for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(got)):
    np.testing.assert_allclose(a, b, atol=1e-5)
  grad = jax.jit(jax.grad(loss(cpu_block)))
  assert 'optimization_barrier' in grad.lower(params).as_text()
