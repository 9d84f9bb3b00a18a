"""mmfusion.layers.dot_product_attention: flax's values and gradients."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmfusion.nn import layers


def _qkv_mask(t=5, s=7):
  rng = np.random.default_rng(0)
  q, k, v = (jnp.asarray(rng.standard_normal((3, n, 2, 4)), jnp.float32)
             for n in (t, s, s))
  mask = rng.random((3, 1, t, s)) > 0.4
  mask[1, 0, 2] = False  # a query that sees no key: flax attends uniformly
  return q, k, v, jnp.asarray(mask)


@pytest.mark.parametrize('materialize', [False, True])
def test_attention_matches_flax_values_and_gradients(materialize, monkeypatch):
  monkeypatch.setattr(jax, 'default_backend', lambda: 'cpu' if materialize
                      else 'gpu')
  q, k, v, mask = _qkv_mask()
  dout = jnp.cos(jnp.arange(q.size, dtype=jnp.float32).reshape(q.shape))
  ours = lambda *a: layers.dot_product_attention(*a, mask=mask)
  ref = lambda *a: nn.dot_product_attention(*a, mask=mask)
  y, vjp = jax.vjp(ours, q, k, v)
  y_ref, vjp_ref = jax.vjp(ref, q, k, v)
  np.testing.assert_allclose(y, y_ref, atol=1e-5)
  for g, g_ref in zip(vjp(dout), vjp_ref(dout)):
    np.testing.assert_allclose(g, g_ref, atol=1e-5)
  hlo = jax.jit(lambda *a: vjp(dout)).lower(q, k, v).as_text()
  assert ('optimization_barrier' in hlo) == materialize


def test_attention_dropout_in_training_is_flax():
  q, k, v, mask = _qkv_mask()
  key = jax.random.PRNGKey(3)
  kwargs = dict(mask=mask, dropout_rng=key, dropout_rate=0.5,
                deterministic=False)
  np.testing.assert_array_equal(
      layers.dot_product_attention(q, k, v, **kwargs),
      nn.dot_product_attention(q, k, v, **kwargs))


def test_block_uses_it_with_flax_parameters():
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 6, 8))
  mask = jnp.array([[1, 1, 1, 1, 0, 0], [1] * 6], bool)
  block = layers.Block(num_heads=2, mlp_dim=16)
  params = block.init(jax.random.PRNGKey(1), x, mask)
  flax_attention = nn.MultiHeadDotProductAttention
  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(nn, 'MultiHeadDotProductAttention',
               lambda **kw: flax_attention(
                   **{k: v for k, v in kw.items() if k != 'attention_fn'}))
    y_flax = block.apply(params, x, mask)
  np.testing.assert_allclose(block.apply(params, x, mask), y_flax, atol=1e-5)
  grad = jax.jit(jax.grad(lambda p: jnp.sum(block.apply(p, x, mask))))
  assert 'optimization_barrier' in grad.lower(params).as_text()  # on CPU
