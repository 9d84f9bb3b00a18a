"""Tests for mmfusion.fusion: a sweep over the registry, then hand checks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmfusion.runtime import errors
from mmfusion import fusion
from mmfusion.nn import registry

B, C = 3, 5
WIDTHS = {'audio': 8, 'image': 4, 'text': 6}
LENGTHS = {'audio': 3, 'image': 1, 'text': 2}
# Row 0: all present; row 1: one absent; row 2: none present.
PRESENT = {2: {'audio': [1, 1, 0], 'image': [1, 0, 0]},
           3: {'audio': [1, 0, 0], 'image': [1, 1, 0], 'text': [1, 1, 0]}}
VARIANTS = [('multiplicative', {'form': 'vector'}),
            ('multiplicative', {'form': 'scalar'})]


def fast_jit(f):
  """jax.jit without LLVM optimisation: these tests compile more than run."""
  return jax.jit(f, compiler_options={'xla_backend_optimization_level': 0})


def names_of(n):
  return sorted(WIDTHS)[:n]


def presence(n):
  return {m: np.array(PRESENT[n][m], bool) for m in names_of(n)}


def random_tokens(n, seed=0):
  rng = np.random.default_rng(seed)
  tokens = {m: rng.normal(size=(B, LENGTHS[m], WIDTHS[m])).astype(np.float32)
            for m in names_of(n)}
  masks = {m: np.ones((B, LENGTHS[m]), bool) for m in names_of(n)}
  masks['audio'][0, -1] = False  # one padding token
  return tokens, masks


def stage_inputs(stage, n):
  """(differentiable inputs x, args(x, present) for the module's apply)."""
  rng = np.random.default_rng(1)
  if stage == 'intermediate':
    tokens, masks = random_tokens(n)
    return tokens, lambda x, present: (x, masks, present)
  if stage == 'late':
    x = {m: rng.normal(size=(B, C)).astype(np.float32) for m in names_of(n)}
  else:
    x = {m: rng.normal(size=(B, WIDTHS[m])).astype(np.float32)
         for m in names_of(n)}
  return x, lambda x, present: (x, present)


def perturb_absent(x, present, seed=2):
  """Huge, inf and NaN values wherever a modality is absent."""
  rng = np.random.default_rng(seed)
  out = {}
  for m, v in x.items():
    noise = 1e6 * rng.normal(size=v.shape).astype(np.float32)
    noise.reshape(-1)[::5] = np.inf
    noise.reshape(-1)[1::7] = np.nan
    keep = present[m].reshape((B,) + (1,) * (v.ndim - 1))
    out[m] = np.where(keep, v, noise)
  return out


def random_params(module, *args):
  """Random parameters of the right shapes, without compiling an init."""
  shapes = jax.eval_shape(module.init, jax.random.key(0), *args)
  leaves, tree = jax.tree.flatten(shapes)
  rng = np.random.default_rng(5)
  return jax.tree.unflatten(tree, [
      (0.3 * rng.normal(size=s.shape)).astype(s.dtype) for s in leaves])


def sweep_cases():
  cases = [(name, {}, n) for name in fusion.FUSIONS for n in (2, 3)]
  cases += [(name, kw, 3) for name, kw in VARIANTS]
  return [pytest.param(name, kw, n, id='-'.join(
      [name, *(f'{k}={v}' for k, v in kw.items()), str(n)]))
          for name, kw, n in cases]


@pytest.mark.parametrize('name,kwargs,n', sweep_cases())
def test_registry_sweep(name, kwargs, n):
  stage = fusion.get_fusion(name).stage
  if stage == 'intermediate':
    kwargs = {'features': 16, **kwargs}
  x, args = stage_inputs(stage, n)
  present = presence(n)
  module32 = fusion.make_fusion(name, **kwargs)
  module16 = fusion.make_fusion(name, **kwargs, dtype=jnp.bfloat16)
  params = random_params(module32, *args(x, present))

  @fast_jit
  def run(x, present):  # compiled once, run on x and on x perturbed
    f = lambda x: module32.apply(params, *args(x, present))
    out, vjp = jax.vjp(f, x)
    (grads,) = vjp(jax.random.normal(jax.random.key(1), out.shape))
    return out, grads, module16.apply(params, *args(x, present))

  out, grads, out16 = run(x, present)
  out_perturbed = run(perturb_absent(x, present), present)[0]
  expected = {'intermediate': (B, 16), 'late': (B, C),
              'early': (B, sum(WIDTHS[m] for m in names_of(n)) + n)}[stage]
  assert out.shape == expected
  assert np.all(np.isfinite(out))
  assert out16.dtype == jnp.bfloat16 and out16.shape == expected
  assert np.all(np.isfinite(np.asarray(out16, np.float32)))
  np.testing.assert_allclose(out_perturbed, out, rtol=0, atol=1e-6)
  for m in names_of(n):  # row 0 has every modality present
    assert np.any(np.asarray(grads[m][0]) != 0), m


def test_registry_names_and_stages():
  stages = {n: s.stage for n, s in fusion.FUSIONS.items()}
  assert stages == {
      'early': 'early',
      **{n: 'intermediate' for n in (
          'concat', 'sum', 'gated', 'nlgate', 'tensor', 'low_rank_tensor',
          'multiplicative', 'film', 'cross_attention', 'bottleneck',
          'perceiver')},
      **{n: 'late' for n in ('late_logits', 'late_probs', 'late_poe',
                             'late_weighted', 'late_stacking')}}
  for name, spec in fusion.FUSIONS.items():
    assert 'dtype' in registry.options_of(spec.module)
    if spec.stage == 'intermediate':
      assert 'features' in registry.options_of(spec.module)


def test_make_fusion_errors():
  with pytest.raises(errors.UserError, match="unknown fusion 'nope'.*concat"):
    fusion.make_fusion('nope')
  with pytest.raises(errors.UserError, match="'rank'.*features, proj_dim"):
    fusion.make_fusion('tensor', rank=3)
  tokens, masks = random_tokens(2)
  bad = [('multiplicative', {'form': 'cube'}, 'form'),
         ('film', {'target': 'smell'}, 'target'),
         ('bottleneck', {'fusion_layer': 5}, 'fusion_layer')]
  for name, kwargs, word in bad:
    with pytest.raises(errors.UserError, match=word):
      jax.eval_shape(fusion.make_fusion(name, **kwargs).init,
                     jax.random.key(0), tokens, masks, presence(2))


def test_default_widths():
  tokens, masks = random_tokens(3)
  widths = {'concat': 18, 'tensor': 9 ** 3}
  for name, spec in fusion.FUSIONS.items():
    if spec.stage == 'intermediate':
      out, _ = jax.eval_shape(fusion.make_fusion(name).init_with_output,
                              jax.random.key(0), tokens, masks, presence(3))
      assert out.shape == (B, widths.get(name, 8)), name


def pooled_np(tokens, masks):
  return {m: (tokens[m] * masks[m][..., None]).sum(1)
          / np.maximum(masks[m].sum(1), 1)[:, None] for m in tokens}


def random_apply(module, *args):
  """(output, params['params']) with random parameters."""
  params = random_params(module, *args)
  out = fast_jit(module.apply)(params, *args)
  return np.asarray(out), params.get('params', {})


def test_concat_is_plain_concatenation():
  tokens, masks = random_tokens(2)
  present = presence(2)
  out, params = random_apply(fusion.make_fusion('concat'), tokens, masks,
                             present)
  z = pooled_np(tokens, masks)
  np.testing.assert_allclose(
      out[0], np.concatenate([z['audio'][0], z['image'][0]]), atol=1e-6)
  assert out.shape == (B, 12)
  np.testing.assert_allclose(  # image absent: its learned embedding
      out[1], np.concatenate([z['audio'][1],
                              params['missing_image']['embedding']]), atol=1e-6)


def test_sum_by_hand():
  tokens, masks = random_tokens(3)
  present = presence(3)
  out, params = random_apply(fusion.make_fusion('sum', features=5), tokens,
                           masks, present)
  z = pooled_np(tokens, masks)
  expected = sum(np.where(present[m][:, None], z[m] @ params[f'proj_{m}'][
      'kernel'] + params[f'proj_{m}']['bias'], 0) for m in z)
  np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(out[2], 0)


def outer_np(vectors):
  t = np.ones((B, 1), np.float32)
  for z in vectors:
    z1 = np.concatenate([np.ones((B, 1), np.float32), z], -1)
    t = (t[:, :, None] * z1[:, None, :]).reshape(B, -1)
  return t


@pytest.mark.parametrize('n', [2, 3])
def test_tensor_is_outer_product(n):
  tokens, masks = random_tokens(n)
  present = presence(n)
  z = pooled_np(tokens, masks)
  plain, _ = random_apply(fusion.make_fusion('tensor', proj_dim=None), tokens,
                        masks, present)
  zs = [np.where(present[m][:, None], z[m], 0) for m in sorted(z)]
  np.testing.assert_allclose(plain, outer_np(zs), rtol=1e-5, atol=1e-6)
  out, params = random_apply(
      fusion.make_fusion('tensor', proj_dim=2, features=4), tokens, masks,
      present)
  zs = [np.where(present[m][:, None], z[m] @ params[f'proj_{m}']['kernel']
                 + params[f'proj_{m}']['bias'], 0) for m in sorted(z)]
  expected = outer_np(zs) @ params['linear']['kernel'] + params['linear']['bias']
  np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


def test_low_rank_tensor_by_hand():
  tokens, masks = random_tokens(3)
  present = presence(3)
  out, params = random_apply(fusion.make_fusion('low_rank_tensor', rank=3),
                           tokens, masks, present)
  z = pooled_np(tokens, masks)
  prod = 1.0
  for m in sorted(z):
    z1 = np.concatenate(
        [np.ones((B, 1)), np.where(present[m][:, None], z[m], 0)], -1)
    prod = prod * np.einsum('be,red->brd', z1, params[f'factor_{m}'])
  expected = (np.einsum('r,brd->bd', params['rank_weights'][0], prod)
              + params['bias'])
  np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)


def test_multiplicative_matrix_by_hand():
  tokens, masks = random_tokens(2)
  present = {m: np.ones(B, bool) for m in tokens}
  out, p = random_apply(fusion.make_fusion('multiplicative', features=5,
                                         target='image'),
                      tokens, masks, present)
  z = pooled_np(tokens, masks)
  x, ctx = z['image'], z['audio']
  expected = (np.einsum('bz,zed,be->bd', ctx, p['w'], x)
              + x @ p['v']['kernel'] + ctx @ p['context_bias']['kernel']
              + p['context_bias']['bias'])
  np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


def late_inputs(n=3):
  rng = np.random.default_rng(3)
  return ({m: rng.normal(size=(B, C)).astype(np.float32) for m in names_of(n)},
          presence(n))


def log_softmax_np(x):
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


def test_late_rules_by_hand():
  logits, present = late_inputs()
  l = np.stack([logits[m] for m in sorted(logits)])  # [M, B, C]
  p = np.stack([present[m] for m in sorted(logits)])[..., None]  # [M, B, 1]
  n = np.maximum(p.sum(0), 1)
  got = {name: random_apply(fusion.make_fusion(name), logits, present)
         for name in ('late_logits', 'late_probs', 'late_poe', 'late_weighted')}
  got, scores = {k: v[0] for k, v in got.items()}, got['late_weighted'][1]
  mean_logits = np.where(p, l, 0).sum(0) / n
  np.testing.assert_allclose(got['late_logits'], mean_logits, atol=1e-6)
  w = np.where(p, np.exp(scores['scores'])[:, None, None], 0)  # [M, B, 1]
  np.testing.assert_allclose(got['late_weighted'][:2],
                             (w * l).sum(0)[:2] / w.sum(0)[:2], atol=1e-5)
  np.testing.assert_allclose(
      got['late_poe'], np.where(p, log_softmax_np(l), 0).sum(0), atol=1e-5)
  probs = np.where(p, np.exp(log_softmax_np(l)), 0).sum(0) / n
  np.testing.assert_allclose(got['late_probs'][:2], np.log(probs[:2]),
                             atol=1e-5)
  # No modality present: uniform probabilities, zero logits.
  np.testing.assert_allclose(got['late_probs'][2], -np.log(C), atol=1e-6)
  for name in ('late_logits', 'late_poe', 'late_weighted'):
    np.testing.assert_allclose(got[name][2], 0)


def test_early_vectors_and_sequences():
  rng = np.random.default_rng(4)
  present = presence(2)
  vecs = {'audio': rng.normal(size=(B, 3)), 'image': rng.normal(size=(B, 2))}
  out, _ = random_apply(fusion.make_fusion('early'), vecs, present)
  pa, pi = present['audio'][:, None], present['image'][:, None]
  expected = np.concatenate([np.where(pa, vecs['audio'], 0),
                             np.where(pi, vecs['image'], 0), pa, pi], -1)
  np.testing.assert_allclose(out, expected, atol=1e-6)

  seqs = {'audio': rng.normal(size=(B, 4, 3)), 'image': rng.normal(size=(B, 4, 2))}
  out, _ = random_apply(fusion.make_fusion('early'), seqs, present)
  assert out.shape == (B, 4, 3 + 2 + 2)
  np.testing.assert_allclose(out[0, :, :3], seqs['audio'][0], atol=1e-6)
  np.testing.assert_allclose(out[1, :, 3:5], 0)  # image absent in row 1
  np.testing.assert_allclose(out[:, :, 5:], np.broadcast_to(
      np.concatenate([pa, pi], -1)[:, None], (B, 4, 2)))

  seqs['image'] = rng.normal(size=(B, 5, 2))
  with pytest.raises(errors.UserError, match='aligned.*5.*flat'):
    fusion.make_fusion('early', layout='aligned').init(
        jax.random.key(0), seqs, present)
  # Unaligned raw inputs (auto) are flattened and standardised:
  # [B, 4*3 + 5*2 + 2].
  out, _ = random_apply(fusion.make_fusion('early'), seqs, present)
  standard = lambda v: (v - v.mean()) / v.std()
  np.testing.assert_allclose(out[0, :12], standard(seqs['audio'][0].reshape(-1)),
                             atol=1e-4)
  np.testing.assert_allclose(out[0, 12:22],
                             standard(seqs['image'][0].reshape(-1)), atol=1e-4)
  np.testing.assert_allclose(out[1, 12:22], 0)  # image absent in row 1
  np.testing.assert_allclose(out[:, 22:], np.concatenate([pa, pi], -1))
  with pytest.raises(errors.UserError, match="layout='diagonal'"):
    fusion.make_fusion('early', layout='diagonal').init(
        jax.random.key(0), seqs, present)


@pytest.mark.parametrize('name', ['tensor', 'low_rank_tensor', 'multiplicative',
                                  'film', 'cross_attention', 'bottleneck',
                                  'perceiver'])
def test_interaction_methods_are_not_additive(name):
  """With default options, f(a, b) - f(a, b') - f(a', b) + f(a', b') != 0.

  An additive fusion (one whose output is g(a) + h(b)) makes this zero, so it
  could never learn a synergistic label; `bottleneck` with a single fusion
  layer was such a case.
  """
  module = fusion.make_fusion(name)
  (a, a2), (b, b2) = [[random_tokens(2, seed)[0][m] for seed in (0, 1)]
                      for m in ('audio', 'image')]
  masks = {m: np.ones((B, LENGTHS[m]), bool) for m in ('audio', 'image')}
  present = {m: np.ones(B, bool) for m in ('audio', 'image')}
  params = random_params(module, {'audio': a, 'image': b}, masks, present)
  f = fast_jit(lambda x, y: module.apply(
      params, {'audio': x, 'image': y}, masks, present))
  second_difference = f(a, b) - f(a, b2) - f(a2, b) + f(a2, b2)
  scale = np.abs(np.asarray(f(a, b))).max()
  # float32 round-off of an additive model stays near 1e-7 of the scale.
  assert np.abs(np.asarray(second_difference)).max() > 1e-5 * scale


def test_late_stacking_inputs_option():
  """Log-probabilities by default (the gradient that trains the base
  classifiers), probabilities on request, a typo in one sentence."""
  logits = {'image': jnp.array([[2.0, 0.0, -1.0]]),
            'text': jnp.array([[0.5, 0.5, 0.0]])}
  present = {'image': jnp.array([True]), 'text': jnp.array([False])}
  for inputs in ('log_probs', 'probs'):
    module = fusion.make_fusion('late_stacking', inputs=inputs)
    params = module.init(jax.random.PRNGKey(0), logits, present)['params']
    neutral = params['absent_probs']
    expected = -np.log(3.0) if inputs == 'log_probs' else 1 / 3
    np.testing.assert_allclose(neutral, expected, rtol=1e-6)
    # The absent text's input is the neutral vector: its logits do not matter.
    other = {**logits, 'text': jnp.array([[9.0, -9.0, 3.0]])}
    np.testing.assert_allclose(module.apply({'params': params}, logits, present),
                               module.apply({'params': params}, other, present))
  with pytest.raises(errors.UserError, match="inputs='logprobs' is not one of"):
    module = fusion.make_fusion('late_stacking', inputs='logprobs')
    module.init(jax.random.PRNGKey(0), logits, present)
