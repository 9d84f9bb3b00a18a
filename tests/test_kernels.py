"""The kernel switch, mmfusion.nn.kernels.

With FLAX every encoder and fusion module has forward-mode and second-order
derivatives; XLA_CPU's custom VJPs have neither (why `model.kernels=flax`
exists); both kernel sets train the same; only the kernel package asks for
the backend.
"""

import ast
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmfusion import build, encoders, fusion, train
from mmfusion.configs import av_digits
from mmfusion.data import pipeline
from mmfusion.nn import kernels
from mmfusion.runtime import errors
from tests import test_encoders, test_fusion
from tests.helpers import ROOT
from tests.test_av_digits import TINY as TINY_AV_DATA

# XLA:CPU compiles these second-order programs 2-3x faster without its new
# fusion emitters; the values are the same.
FAST_COMPILE = {'xla_cpu_use_fusion_emitters': False}
# Second-order programs take seconds per Transformer block to compile: one
# block or scan direction where the tiny configs have two.
SMALLER = {'gru': {'bidirectional': False}, 'bottleneck': {'num_layers': 1},
           'perceiver': {'num_layers': 0}}
# Linear in their parameters and inputs: a Hessian of zeros.
LINEAR = {'early', 'late_logits'}


def _random_like(tree, seed, lead=()):
  rng = np.random.default_rng(seed)
  return jax.tree.map(
      lambda x: rng.normal(size=lead + x.shape).astype(x.dtype), tree)


def _vdot(a, b):
  return sum(jnp.vdot(x, y) for x, y in zip(jax.tree.leaves(a),
                                            jax.tree.leaves(b)))


def _pick(tree, i):
  return jax.tree.map(lambda v: v[i], tree)


def _derivatives(f, primals):
  """Forward mode and Hessian-vector products of `f` at `primals`, one jit.

  `jax.linearize` of p -> (gradient of the loss <w, f(p)>, f(p)), applied
  to tangents t and u, gives the Hessian-vector products H t, H u (forward
  over reverse: the jvp of the gradient, partially evaluated) and f's
  linearization J t, J u (forward mode through f: no separate `jax.jvp`,
  which would compile f's forward mode a second time).
  """
  f = jax.jit(f)  # traced once; the transformations work on its jaxpr
  w = _random_like(jax.eval_shape(f, primals), 1)
  tu = _random_like(primals, 2, lead=(2,))

  def loss(p):
    out = f(p)
    return _vdot(w, out), out

  def run(primals):
    (grad, _), linear = jax.linearize(
        jax.grad(loss, has_aux=True), primals)
    h_tu, j_tu = jax.vmap(linear)(tu)
    t, u = _pick(tu, 0), _pick(tu, 1)
    return {
        'linearized': _pick(j_tu, 0), 'hvp': h_tu,
        'forward': jnp.stack([_vdot(w, _pick(j_tu, 0)),
                              _vdot(w, _pick(j_tu, 1))]),
        'reverse': jnp.stack([_vdot(grad, t), _vdot(grad, u)]),
        'u_h_t': _vdot(u, _pick(h_tu, 0)), 't_h_u': _vdot(t, _pick(h_tu, 1))}

  return jax.jit(run, compiler_options=FAST_COMPILE)(primals)


def _check(d, linear: bool):
  """Finite; forward mode is not zero and agrees with reverse mode
  (<w, J t> = <J^T w, t>); the Hessian is symmetric (<u, H t> = <t, H u>),
  and zero only for a linear module."""
  for leaf in jax.tree.leaves(d):
    assert np.all(np.isfinite(leaf))
  assert any(np.any(j != 0) for j in jax.tree.leaves(d['linearized']))
  np.testing.assert_allclose(d['forward'], d['reverse'], rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(d['u_h_t'], d['t_h_u'], rtol=1e-4, atol=1e-5)
  assert any(np.any(h != 0) for h in jax.tree.leaves(d['hvp'])) != linear


@pytest.mark.parametrize('name', sorted(encoders.ENCODERS))
def test_encoder_has_forward_mode_and_hvp_with_flax_kernels(name):
  model, x = test_encoders._build(name, kernels=kernels.FLAX,
                                  **SMALLER.get(name, {}))
  params = test_fusion.random_params(model, x)['params']
  floating = np.issubdtype(x.dtype, np.floating)  # token ids are not

  def tokens(primals):
    p, x_ = primals if floating else (primals, x)
    tokens_BxTxD, mask_BxT = model.apply({'params': p}, x_)
    return tokens_BxTxD * mask_BxT[..., None]

  _check(_derivatives(tokens, (params, x) if floating else params),
         linear=False)


@pytest.mark.parametrize('name', sorted(fusion.FUSIONS))
def test_fusion_has_forward_mode_and_hvp_with_flax_kernels(name):
  stage = fusion.get_fusion(name).stage
  options = {'features': 16} if stage == 'intermediate' else {}
  module = fusion.make_fusion(name, kernels=kernels.FLAX, **options,
                              **SMALLER.get(name, {}))
  x, args = test_fusion.stage_inputs(stage, 2)
  present = test_fusion.presence(2)
  variables = test_fusion.random_params(module, *args(x, present))
  params = variables.get('params', {})  # some late rules have none
  fused = lambda primals: module.apply({'params': primals[0]},
                                       *args(primals[1], present))
  _check(_derivatives(fused, (params, x)), linear=name in LINEAR)


def test_xla_cpu_kernels_have_no_forward_mode():
  """Custom VJPs are reverse mode only: `model.kernels=flax` is for jvp,
  linearize and Hessian-vector products."""
  model, x = test_encoders._build('cnn', kernels=kernels.XLA_CPU)
  params = test_fusion.random_params(model, x)['params']
  f = lambda p: model.apply({'params': p}, x)[0]
  with pytest.raises(TypeError, match='custom_vjp'):
    jax.jvp(f, (params,), (params,))


def _av_config(kernel_set: str, data_dir: str):
  """av_digits' runlocal run shrunk to 20 steps of 16 on one device, on a
  tiny dataset; image and audio only, the encoders built from kernels (the
  text GRU has none)."""
  config = av_digits.get_config('image+audio,runlocal')
  config.model.kernels = kernel_set
  config.num_devices = 1
  config.batch_size = 16
  config.total_steps = 20
  config.eval_every = config.checkpoint_every = 20
  config.log_every = 1
  config.optimizer.warmup_steps = 5
  config.data.data_dir = data_dir
  config.data.overrides = dict(TINY_AV_DATA)
  config.data.extra_eval_splits = ()
  return config


def _custom_vjps(config) -> int:
  """custom_vjp calls in the traced forward of the model `config` builds."""
  run = build.run(config)
  batch = run.abstract_batch(2)
  params = jax.eval_shape(run.model.init, jax.random.key(0), batch)
  jaxpr = jax.make_jaxpr(lambda p, b: run.model.apply(p, b))(params, batch)
  return str(jaxpr).count('custom_vjp_call')


def _loss_curve(config) -> list[float]:
  """The training loss of each of the config's steps: the loop's own jitted
  `train.train_step` on the loop's batches (no evaluation or checkpoints)."""
  run = build.run(config)
  pipeline.prepare(run.builder)
  batches = iter(pipeline.train_batches(
      run.builder.as_data_source(split='train'), batch_size=config.batch_size,
      seed=config.seed, modalities=config.data.modalities,
      targets=run.task.TARGETS))
  # Compiled as a run compiles it: the suite's older CPU emitters (conftest)
  # round the two kernel sets apart by more than 1e-5 within 20 steps.
  step = jax.jit(lambda s, b: train.train_step(s, b, model=run.model,
                                               task=run.task, tx=run.tx),
                 donate_argnums=0,
                 compiler_options={'xla_cpu_use_fusion_emitters': True})
  state, losses = run.init_state(), []
  for _ in range(config.total_steps):
    state, metrics = step(state, next(batches))
    losses.append(float(metrics['loss']))
  return losses


def test_both_kernel_sets_train_the_same_loss_curve(data_dir):
  # The key reaches the encoders: only xla_cpu's ops are custom VJPs.
  assert _custom_vjps(_av_config('flax', data_dir)) == 0
  assert _custom_vjps(_av_config('xla_cpu', data_dir)) > 0
  losses = {k: _loss_curve(_av_config(k, data_dir)) for k in ('flax',
                                                              'xla_cpu')}
  assert len(losses['flax']) == 20 and losses['flax'][-1] < losses['flax'][0]
  # GroupNorm and the chunked filter gradients sum in another order.
  np.testing.assert_allclose(losses['xla_cpu'], losses['flax'], rtol=1e-5)


def _backend_lines(path):
  """Lines of `path` whose code (not docstrings) names `default_backend`."""
  with open(path) as f:
    tree = ast.parse(f.read())
  return [node.lineno for node in ast.walk(tree)
          if 'default_backend' in (getattr(node, 'attr', None),
                                   getattr(node, 'id', None))]


# Prints the backend in its report and chooses nothing by it.
NAMES_THE_BACKEND = {'mmfusion/cost.py'}


def test_only_the_kernel_package_asks_for_the_backend():
  kernel_package = os.path.join('mmfusion', 'nn', 'kernels', '')
  found = []
  for folder, _, files in os.walk(os.path.join(ROOT, 'mmfusion')):
    for path in (os.path.join(folder, f) for f in files if f.endswith('.py')):
      rel = os.path.relpath(path, ROOT)
      if not rel.startswith(kernel_package) and rel not in NAMES_THE_BACKEND:
        found += [f'{rel}:{n}' for n in _backend_lines(path)]
  assert not found, (f'{found} ask jax.default_backend(); pick ops through '
                     f'model.kernels (mmfusion/nn/kernels) instead.')
  assert _backend_lines(os.path.join(ROOT, kernel_package, '__init__.py'))


def test_resolve_auto_names_and_unknown_names(monkeypatch):
  assert jax.default_backend() == 'cpu'
  assert kernels.resolve('auto') is kernels.XLA_CPU
  assert kernels.resolve('flax') is kernels.FLAX
  assert kernels.resolve('xla_cpu') is kernels.XLA_CPU
  monkeypatch.setattr(jax, 'default_backend', lambda: 'gpu')
  assert kernels.resolve('auto') is kernels.FLAX
  with pytest.raises(errors.UserError,
                     match="unknown model.kernels 'xla_gpu'.*auto, flax, "
                           "xla_cpu"):
    kernels.resolve('xla_gpu')
