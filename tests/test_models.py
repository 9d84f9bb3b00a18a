"""The assembled model: one test per registered fusion x {2, 3} modalities.

Each builds `models.from_config` with tiny `mlp` encoders on random vectors and
checks shapes, finiteness (f32 under jit, and bf16), that gradients reach every
modality, that absent modalities cannot leak, and that `train.train_step`
learns a fixed batch. These tests spend their time compiling, not running, so
each case is one compiled program, with random parameters instead of a
compiled init (the initialisers are slow to compile; test_train covers them).
"""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from mmfusion.configs import seed as seed_config
from mmfusion import build, fusion, models, tasks, train

TASK = tasks.classification.Classification()  # its loss needs no data

B, C = 4, 3
WIDTHS = {'image': 12, 'text': 6, 'tabular': 5}
MODALITIES = {2: ('image', 'text'), 3: ('image', 'tabular', 'text')}
# Attention fusions with the fewest blocks that still take every code path.
TINY = {'bottleneck': {'num_layers': 1, 'fusion_layer': 0, 'num_heads': 2},
        'cross_attention': {'num_heads': 2},
        'perceiver': {'num_latents': 2, 'num_layers': 0, 'num_heads': 2}}
# XLA's older CPU emitters compile these small programs about twice as fast.
FAST_COMPILE = {'xla_cpu_use_fusion_emitters': False}


def model_config(name: str, n: int, dtype: str = 'float32'):
  config = ml_collections.ConfigDict()
  config.fusion = name
  config.fusion_kwargs = TINY.get(name, {})
  config.encoders = {m: {'name': 'mlp', 'features': 8} for m in MODALITIES[n]}
  config.early_encoder = {'name': 'mlp', 'features': 8}
  config.head_hidden = ()
  config.remat = False
  config.dtype = dtype
  config.kernels = 'auto'
  models.check_config(config)
  return config


def random_batch(n: int):
  rng = np.random.default_rng(0)
  batch = {m: rng.normal(size=(B, WIDTHS[m])).astype(np.float32)
           for m in MODALITIES[n]}
  batch.update({f'present/{m}': np.ones(B, bool) for m in MODALITIES[n]})
  batch['label'] = rng.integers(0, C, B).astype(np.int32)
  return batch


def with_absent(batch, names):
  """Row 0: all present; row 1: first absent; row 2: last; row 3: none."""
  out = dict(batch)
  for i, m in enumerate(names):
    absent_B = np.array([False, i == 0, i == len(names) - 1, True])
    out[f'present/{m}'] = ~absent_B
  return out


def poisoned(batch, names):
  """Huge, infinite and NaN values wherever a modality is absent."""
  out = dict(batch)
  for m in names:
    bad_BxF = np.resize(np.array([1e30, -np.inf, np.nan, 3e38], np.float32),
                        batch[m].shape)
    out[m] = np.where(batch[f'present/{m}'][:, None], batch[m], bad_BxF)
  return out


def random_params(model, batch):
  """Parameters of the right shapes and a sane scale, without an init."""
  shapes = jax.eval_shape(model.init, jax.random.key(0), batch)['params']
  rng = np.random.default_rng(1)
  return jax.tree.map(
      lambda s: (0.3 * rng.normal(size=s.shape)).astype(s.dtype), shapes)


def run_case(name: str, n: int, steps: int = 3):
  """Everything one case checks, from one jitted program."""
  names = MODALITIES[n]
  model = models.from_config(model_config(name, n), C)
  model16 = models.from_config(model_config(name, n, 'bfloat16'), C)
  batch = random_batch(n)
  masked = with_absent(batch, names)
  # [3, B, ...]: all present, some absent, the absent ones poisoned.
  batches = jax.tree.map(lambda *xs: np.stack(xs), batch, masked,
                         poisoned(masked, names))
  tx = optax.sgd(0.1)  # fewer ops to compile than Adam

  @functools.partial(jax.jit, compiler_options=FAST_COMPILE)
  def run(params, batch, batches):
    state = build.create_train_state(model, tx, batch, 0).replace(
        params=params, opt_state=tx.init(params))  # XLA drops the unused init
    forward = lambda b: model.apply({'params': state.params}, b)[0]
    logits_3xBxC = jax.vmap(forward)(batches)
    logits16_BxC, _ = model16.apply({'params': state.params}, batch)
    input_grads = {}
    if name == 'early':  # one shared encoder: check each input reaches it
      input_grads = jax.grad(lambda xs: TASK.loss(
          forward({**batch, **xs}), batch)[0])({m: batch[m] for m in names})
    # steps + 1 calls: the last one's loss is after `steps` updates.
    step = lambda s, _: train.train_step(s, batch, model=model, task=TASK,
                                         tx=tx)
    _, metrics = jax.lax.scan(step, state, length=steps + 1)
    return logits_3xBxC, logits16_BxC, input_grads, metrics

  return jax.device_get(run(random_params(model, batch), batch, batches))


@pytest.mark.parametrize('n', sorted(MODALITIES))
@pytest.mark.parametrize('name', list(fusion.FUSIONS))
def test_fusion_in_a_model(name, n):
  names = MODALITIES[n]
  logits_3xBxC, logits16_BxC, input_grads, metrics = run_case(name, n)
  logits_BxC, masked_BxC, poisoned_BxC = logits_3xBxC
  assert logits_BxC.shape == logits16_BxC.shape == (B, C)
  assert np.all(np.isfinite(logits_3xBxC))
  assert logits16_BxC.dtype == jnp.float32  # the head casts bf16 logits back
  assert np.all(np.isfinite(logits16_BxC))

  # Gradients reach every modality: its encoder, or for early the shared
  # encoder and every modality's input.
  parts = (['encoder_early'] if name == 'early'
           else [f'encoder_{m}' for m in names])
  for part in parts:
    assert metrics[f'grad_norm/{part}'][0] > 0, part
  for m in input_grads:
    assert np.any(input_grads[m] != 0), m
  assert sorted(input_grads) == (sorted(names) if name == 'early' else [])

  # Absent modalities: poison cannot change any output, and rows with
  # absences cannot change the fully present row 0.
  np.testing.assert_array_equal(poisoned_BxC, masked_BxC)
  np.testing.assert_allclose(masked_BxC[0], logits_BxC[0], rtol=1e-5,
                             atol=1e-6)

  # train.train_step learns the fixed batch.
  assert np.all(np.isfinite(metrics['loss']))
  assert metrics['loss'][-1] < metrics['loss'][0]


def test_seed_model_forward():
  model = models.from_config(seed_config.get_config().model, num_outputs=10)
  batch = {'image': np.ones((1, 100), np.float32),
           'text': np.ones((1, 50), np.float32)}
  (logits_1x10, _), _ = jax.jit(model.init_with_output)(
      jax.random.PRNGKey(0), batch)
  assert logits_1x10.shape == (1, 10)
