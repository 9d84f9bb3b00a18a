"""The decoder's KV cache and the decoding algorithms.

Cached decoding must give what recomputing the whole prefix gives, in both
conditioning modes; beam 1 and top-k 1 sampling must be greedy; EOS, the
length penalty and the temperature must do what they say, on a bigram model
whose answers are worked out by hand; a decoder trained on a copy task
copies; 8 devices decode what 1 does.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mmfusion import sharding
from mmfusion.nn import decoder as decoder_lib
from mmfusion.nn import decoding, kernels, layers
from mmfusion.runtime import errors

BOS, EOS = 1, 2
B, L = 8, 8  # batch and max_length of the decoder tests
MODES = {
    'cross_attention': dict(conditioning='cross_attention'),
    'prefix': dict(conditioning='prefix'),
    'prefix_lm_sincos': dict(conditioning='prefix', prefix_lm=True,
                             positions='sincos', tie_embedding=False),
}


def _decoder(mode, **kw):
  return decoder_lib.Decoder(vocab_size=13, features=16, num_layers=2,
                             num_heads=2, max_positions=L, **MODES[mode], **kw)


@functools.lru_cache(maxsize=None)
def _inputs():
  """Memory [B, 5, 6] with padding, right-padded prompts, and sequences
  that continue each row's prompt (numpy: no op-by-op compiles)."""
  rng = np.random.default_rng(0)
  memory = rng.standard_normal((B, 5, 6)).astype(np.float32)
  mask = np.arange(5)[None] < np.array([5, 3, 1, 4, 2, 5, 3, 4])[:, None]
  prompt = np.array([[BOS, 7, 4], [BOS, 0, 0], [BOS, 5, 0], [BOS, 9, 3],
                     [BOS, 0, 0], [BOS, 6, 0], [BOS, 8, 8], [BOS, 3, 0]],
                    np.int32)
  seq = rng.integers(3, 13, (B, L)).astype(np.int32)
  seq[:, :3] = np.where(prompt > 0, prompt, seq[:, :3])
  return memory, mask, prompt, seq


def _lengths(prompt):
  return np.sum(np.asarray(prompt) != 0, axis=1)


def _random_variables(dec, *args):
  """Parameters of the decoder's shapes drawn with numpy (flax's jitted
  init compiles a random generator per parameter: seconds)."""
  rng = np.random.default_rng(1)
  def draw(path, x):
    if path[-1].key == 'scale':
      return 1 + 0.1 * rng.standard_normal(x.shape, np.float32)
    std = 1.0 if len(x.shape) == 1 else x.shape[0] ** -0.5
    return std * rng.standard_normal(x.shape, np.float32)
  shapes = jax.eval_shape(dec.init, jax.ShapeDtypeStruct((2,), jnp.uint32),
                          *args)
  return jax.tree_util.tree_map_with_path(draw, shapes)


# EOS's embedding is made 1.1 x this token's, so that greedy decoding stops
# at EOS in some rows and not in others (the tests check that it does).
EOS_LIKE = {'cross_attention': 4}


@functools.lru_cache(maxsize=None)
def _model(mode):
  """(decoder, variables), the parameters random."""
  dec = _decoder(mode)
  memory, mask, _, seq = _inputs()
  variables = _random_variables(dec, seq, memory, mask)
  if mode in EOS_LIKE:
    embedding = variables['params']['embed']['embedding']
    embedding[EOS] = 1.1 * embedding[EOS_LIKE[mode]]
  return dec, variables


def _recompute(dec, variables, memory, mask, max_length):
  """(step, cache) that reruns the teacher-forced decoder on the whole
  prefix at every step: the reference for the KV cache."""
  cache = {'seq_BxL': jnp.zeros((memory.shape[0], max_length), jnp.int32),
           'len_B': jnp.zeros((memory.shape[0],), jnp.int32),
           'memory': memory, 'mask': mask}

  def step(tokens_BxT, c):
    t = tokens_BxT.shape[1]
    seq = decoder_lib.write(c['seq_BxL'], tokens_BxT, c['len_B'])
    logits_BxLxV = dec.apply(variables, seq, c['memory'], c['mask'])
    at_BxT = jnp.minimum(c['len_B'][:, None] + jnp.arange(t), max_length - 1)
    logits = jnp.take_along_axis(logits_BxLxV, at_BxT[..., None], axis=1)
    n_B = jnp.sum(tokens_BxT != 0, axis=1, dtype=jnp.int32)
    return logits, {**c, 'seq_BxL': seq, 'len_B': c['len_B'] + n_B}

  return step, cache


def _poisoned(memory, mask):
  return jnp.where(mask[..., None], memory, 1e4)


def _incremental(dec, variables, memory, mask, prompt, seq):
  """Logits of the right-padded prompts in one call, then of each row's
  continuation (`seq`) one token a step; and the final cache positions."""
  length_B = jnp.sum(prompt != 0, axis=1)
  cache = dec.apply(variables, memory, mask, max_length=L,
                    method=dec.init_cache)
  logits_BxPxV, cache = dec.apply(variables, prompt, cache, method=dec.extend)

  def one(cache, i):
    at_B = length_B + i
    tok_B = jnp.where(at_B < L, seq[jnp.arange(B), jnp.minimum(at_B, L - 1)],
                      0)
    logits_Bx1xV, cache = dec.apply(variables, tok_B[:, None], cache,
                                    method=dec.extend)
    return cache, logits_Bx1xV[:, 0]

  # L - 1 steps: what a row with a 1-token prompt takes; the others then
  # feed padding, which must leave them where they are.
  cache, logits_NxBxV = jax.lax.scan(one, cache, jnp.arange(L - 1))
  return logits_BxPxV, logits_NxBxV, cache['position_B']


def _run_all(dec, mode, variables, memory, mask, prompt, seq):
  """One compiled program per mode (compiles dominate this file's time):
  teacher-forced logits (also with the padded memory poisoned, with all of
  it padding, and with dropout in training) and incremental ones; greedy
  decoding with the KV cache and recomputing the prefix; in
  cross_attention mode beam 3 and its beams' teacher-forced log
  probabilities, in prefix mode greedy on rows 2-4 alone."""
  out = {'full': dec.apply(variables, seq, memory, mask),
         'poisoned': dec.apply(variables, seq, _poisoned(memory, mask), mask),
         'empty': dec.apply(variables, seq, memory, jnp.zeros_like(mask)),
         'dropout': dec.clone(dropout=0.5).apply(
             variables, seq, memory, mask, train=True,
             rngs={'dropout': jax.random.PRNGKey(0)})}
  out['prefill'], out['steps'], out['position'] = _incremental(
      dec, variables, memory, mask, prompt, seq)
  if mode not in ('cross_attention', 'prefix'):
    return out
  kw = dict(max_length=L, eos_id=EOS)
  step, cache = decoder_lib.stepper(dec, variables, memory, mask,
                                    max_length=L)
  ref_step, ref_cache = _recompute(dec, variables, memory, mask, L)
  out['greedy'] = decoding.greedy(step, cache, prompt, **kw)
  out['greedy_ref'] = decoding.greedy(ref_step, ref_cache, prompt, **kw)
  if mode == 'prefix':
    step3, cache3 = decoder_lib.stepper(dec, variables, memory[2:5],
                                        mask[2:5], max_length=L)
    out['rows_2_4'] = decoding.greedy(step3, cache3, prompt[2:5], **kw)
    return out
  out['beam3'] = decoding.beam_search(step, cache, prompt, beam_size=3, **kw)
  # Teacher-forced log P of each beam's token t given those before it.
  beams = out['beam3'][0].reshape(-1, L)
  logits = dec.apply(variables, beams, jnp.repeat(memory, 3, axis=0),
                     jnp.repeat(mask, 3, axis=0))
  logits = logits.at[..., 0].set(-jnp.inf)  # pad is never generated
  logp = jnp.take_along_axis(jax.nn.log_softmax(logits[:, :-1]),
                             beams[:, 1:, None], axis=-1)
  out['beam3_logp'] = logp.reshape(-1, 3, L - 1)
  return out


@functools.lru_cache(maxsize=None)
def _run(mode):
  dec, variables = _model(mode)
  fn = jax.jit(functools.partial(_run_all, dec, mode))
  return jax.device_get(fn(variables, *_inputs()))


# -------------------------------------------------------- The KV cache ---
@pytest.mark.parametrize('mode', sorted(MODES))
def test_cached_logits_equal_the_teacher_forced_ones(mode):
  """Prefill right-padded prompts, then one token a step (each row its own
  continuation): every real position's logits match the full forward."""
  out = _run(mode)
  length_B = _lengths(_inputs()[2])
  for b, n in enumerate(length_B):
    np.testing.assert_allclose(out['prefill'][b, :n], out['full'][b, :n],
                               atol=2e-5)
    np.testing.assert_allclose(out['steps'][:L - n, b], out['full'][b, n:],
                               atol=2e-5)
  np.testing.assert_array_equal(out['position'], np.full(B, L))


@pytest.mark.parametrize('mode', ['cross_attention', 'prefix'])
def test_cached_decoding_equals_recomputing_the_prefix(mode):
  """Greedy decoding with the KV cache and with a step that reruns the
  teacher-forced decoder on the whole prefix: the same tokens; prompts
  kept, padding only after EOS."""
  out = _run(mode)
  np.testing.assert_array_equal(out['greedy'], out['greedy_ref'])
  greedy = out['greedy']
  assert greedy.shape == (B, L) and greedy.dtype == np.int32
  _, _, prompt, _ = _inputs()
  np.testing.assert_array_equal(greedy[:, :3][prompt > 0], prompt[prompt > 0])
  for row, n in zip(greedy, _lengths(prompt)):  # pad only after EOS
    stops = np.flatnonzero(row[n:] == EOS)
    end = n + stops[0] + 1 if stops.size else L
    assert np.all(row[:end] != 0) and np.all(row[end:] == 0)
  assert 2 <= np.sum(greedy == EOS) <= B - 2  # some rows stop early


def test_beam_scores_are_length_penalised_log_probabilities():
  """Each beam's score is log P(its tokens) / brevity(generated length),
  log P from the teacher-forced decoder: a cache reordered to the wrong
  beam at some step would break it. Beams are distinct, best first."""
  out = _run('cross_attention')
  tokens_BxKxL, scores_BxK = out['beam3']
  assert tokens_BxKxL.shape == (B, 3, L) and scores_BxK.shape == (B, 3)
  assert np.all(np.diff(scores_BxK, axis=1) <= 0)
  length_B = _lengths(_inputs()[2])
  for b in range(B):
    assert len({tuple(t) for t in tokens_BxKxL[b]}) == 3
    for j in range(3):
      row = tokens_BxKxL[b, j]
      stops = np.flatnonzero(row[length_B[b]:] == EOS)
      end = length_B[b] + stops[0] + 1 if stops.size else L
      logp = out['beam3_logp'][b, j, length_B[b] - 1:end - 1].sum()
      np.testing.assert_allclose(
          scores_BxK[b, j], logp / decoding.brevity(end - length_B[b], 0.6),
          atol=1e-4)
      assert np.all(row[:end] != 0) and np.all(row[end:] == 0)


# --------------------------------------------- A bigram model by hand ---
# Tokens: 0 pad, 1 BOS, 2 EOS, 3 a, 4 b, 5 c. From BOS: EOS .5, a .45, the
# rest .05; then a -> b -> c -> EOS for sure.
_P = np.full((6, 6), 1e-9)
_P[BOS, [EOS, 3, 4, 5]] = [0.5, 0.45, 0.03, 0.02]
_P[3, 4] = _P[4, 5] = _P[5, EOS] = 1.0
_P[[0, EOS]] = 1.0 / 6
_LOGP = np.log(_P / _P.sum(1, keepdims=True)).astype(np.float32)


def _bigram_step(tokens_BxT, cache):
  return jnp.asarray(_LOGP)[tokens_BxT], {'calls_B': cache['calls_B'] + 1}


def _bigram_cache(b):
  return {'calls_B': np.zeros((b,), np.int32)}


def test_eos_stops_and_pads_and_max_length_cuts():
  prompt = np.array([[BOS, 0], [BOS, 3], [BOS, 4], [BOS, 5]], np.int32)
  got = jax.jit(functools.partial(decoding.greedy, _bigram_step,
                                  max_length=5, eos_id=EOS))(
                                      _bigram_cache(4), prompt)
  np.testing.assert_array_equal(got, [[1, 2, 0, 0, 0], [1, 3, 4, 5, 2],
                                      [1, 4, 5, 2, 0], [1, 5, 2, 0, 0]])
  cut = decoding.greedy(_bigram_step, _bigram_cache(1), prompt[1:2],
                        max_length=4, eos_id=EOS)
  np.testing.assert_array_equal(cut, [[1, 3, 4, 5]])  # no room for EOS


def test_length_penalty_changes_what_beam_search_prefers():
  """"EOS" now (log .5) against "a b c EOS" (log .45): without a penalty
  the short one wins; with alpha=1 the long one does, .799 / 1.5 < .693.
  Either way the hypothesis finished at step 1 is kept while the other
  beam goes on for three more steps."""
  prompt = np.array([[BOS]], np.int32)
  search = jax.jit(lambda alpha: decoding.beam_search(  # alpha traced
      _bigram_step, _bigram_cache(1), prompt, beam_size=2, max_length=6,
      eos_id=EOS, length_penalty=alpha))
  short, long = [1, 2, 0, 0, 0, 0], [1, 3, 4, 5, 2, 0]
  tokens, scores = search(0.0)
  np.testing.assert_array_equal(tokens[0], [short, long])
  np.testing.assert_allclose(scores[0], np.log([0.5, 0.45]), atol=1e-5)
  tokens, scores = search(1.0)
  np.testing.assert_array_equal(tokens[0], [long, short])
  np.testing.assert_allclose(scores[0], [np.log(0.45) / 1.5, np.log(0.5)],
                             atol=1e-5)


def test_beam_one_and_top_one_sampling_are_greedy():
  """On a bigram model with random log-probabilities over 13 tokens, from
  prompts of 1 to 3 tokens. (The decoder's cache plays no part: one beam is
  never reordered; sampling and greedy share their loop.)"""
  logp_VxV = np.log(np.random.default_rng(5).dirichlet(
      np.full(13, 0.5), 13)).astype(np.float32)
  step = lambda tokens_BxT, cache: (jnp.asarray(logp_VxV)[tokens_BxT], cache)
  _, _, prompt, _ = _inputs()
  kw = dict(max_length=L, eos_id=EOS)
  greedy, beam1, top1 = jax.jit(lambda c: (
      decoding.greedy(step, c, prompt, **kw),
      decoding.beam_search(step, c, prompt, beam_size=1, length_penalty=0.0,
                           **kw)[0][:, 0],
      decoding.sample(step, c, prompt, jax.random.PRNGKey(5), top_k=1,
                      temperature=0.7, **kw)))(_bigram_cache(B))
  np.testing.assert_array_equal(beam1, greedy)
  np.testing.assert_array_equal(top1, greedy)
  assert len({tuple(row) for row in np.asarray(greedy)}) > 4
  assert 2 <= np.sum(np.asarray(greedy) == EOS) <= B - 2


@pytest.mark.parametrize('temperature,top_k', [(2.0, 0), (0.5, 2)])
def test_sampling_follows_temperature_and_top_k(temperature, top_k):
  n = 4000
  prompt = jnp.full((n, 1), BOS, jnp.int32)
  tokens = decoding.sample(_bigram_step, _bigram_cache(n), prompt,
                           jax.random.PRNGKey(0), max_length=2, eos_id=EOS,
                           temperature=temperature, top_k=top_k)
  p = _P[BOS] ** (1 / temperature)
  if top_k:
    p[np.argsort(-p)[top_k:]] = 0
  p = p / p.sum()
  seen = np.bincount(np.asarray(tokens[:, 1]), minlength=6) / n
  np.testing.assert_allclose(seen, p, atol=0.03)
  if top_k:
    assert set(np.unique(tokens[:, 1])) == {EOS, 3}


# ---------------------------------------------------- Shapes, options ---
@pytest.mark.parametrize('mode', sorted(MODES))
def test_memory_padding_is_never_read(mode):
  """Padded memory tokens poisoned: the same logits; an all-padding memory
  gives finite logits, other than the real ones; so does dropout."""
  out = _run(mode)
  assert out['full'].shape == (B, L, 13)
  np.testing.assert_allclose(out['poisoned'], out['full'], atol=2e-5)
  for other in ('empty', 'dropout'):
    assert np.all(np.isfinite(out[other]))
    assert not np.allclose(out[other], out['full'], atol=1e-2)


def test_pooled_memory_kernels_dtype_and_tied_head():
  """A pooled [B, D] memory is one real token; the kernel set's attention
  is the one called; bfloat16 computes in bfloat16; the logits come from
  the embedding unless tie_embedding=False. (Traced, not compiled.)"""
  memory, mask, _, seq = _inputs()
  tokens, token_mask = decoder_lib.as_tokens(memory[:, 0])
  np.testing.assert_array_equal(tokens, memory[:, :1])
  np.testing.assert_array_equal(token_mask, np.ones((B, 1), bool))
  dec, variables = _model('cross_attention')
  assert 'head' not in variables['params']
  assert 'head' in _model('prefix_lm_sincos')[1]['params']
  jaxpr = lambda d: str(jax.make_jaxpr(d.apply)(variables, seq, memory, mask))
  assert 'custom_vjp_call' in jaxpr(dec.clone(kernels=kernels.XLA_CPU))
  assert 'custom_vjp_call' not in jaxpr(dec)
  half = jax.eval_shape(dec.clone(dtype=jnp.bfloat16).apply, variables, seq,
                        memory[:, 0])
  assert half.shape == (B, L, 13) and half.dtype == jnp.bfloat16


def test_decoding_works_at_any_batch_size():
  """The 8-row batch and its rows 2-4 alone, decoded by one function: each
  row's tokens do not depend on the other rows."""
  out = _run('prefix')
  np.testing.assert_array_equal(out['rows_2_4'], out['greedy'][2:5])


def test_decoding_on_eight_devices_gives_the_tokens_of_one():
  """Beam search with the batch split over a ('data',) mesh of 8 fake
  devices, as the train step's is: the tokens of the one-device decode."""
  dec, variables = _model('cross_attention')
  memory, mask, prompt, _ = _inputs()

  def decode(v, m, k, p):
    step, cache = decoder_lib.stepper(dec, v, m, k, max_length=L)
    return decoding.beam_search(step, cache, p, beam_size=3, max_length=L,
                                eos_id=EOS)

  mesh = sharding.make_mesh(8)
  rows = sharding.batch_sharding(mesh)
  placed = [jax.device_put(x, rows) for x in (memory, mask, prompt)]
  tokens, scores = jax.jit(decode, out_shardings=rows)(
      jax.device_put(variables, sharding.replicated(mesh)), *placed)
  assert len(tokens.sharding.device_set) == 8
  one_tokens, one_scores = _run('cross_attention')['beam3']
  np.testing.assert_array_equal(tokens, one_tokens)
  np.testing.assert_allclose(scores, one_scores, atol=1e-5)


# ----------------------------------------------------------- Copy task ---
@pytest.mark.slow  # trains: 300 steps
def test_a_decoder_trained_on_a_copy_task_copies():
  """Cross-attend to an embedded string of 6 digits, write it out: after
  300 Adam steps greedy decoding copies 64 fresh strings exactly (of 7**6
  possible strings, the 300 x 64 training ones saw about 15%)."""
  N = 6  # digits per string
  class Copier(nn.Module):
    @nn.compact
    def __call__(self, src_BxM, tokens_BxL):
      mem = nn.Embed(10, 32)(src_BxM) + jnp.asarray(
          layers.sincos_posemb(src_BxM.shape[1], 32))
      dec = decoder_lib.Decoder(10, features=32, num_layers=2, num_heads=2,
                                max_positions=N + 2)
      return dec(tokens_BxL, mem), mem

  model = Copier()
  batch = lambda key, n: jax.random.randint(key, (n, N), 3, 10)
  target = lambda src: jnp.concatenate(
      [jnp.full((src.shape[0], 1), BOS), src,
       jnp.full((src.shape[0], 1), EOS)], axis=1)
  params = model.init(jax.random.PRNGKey(0), batch(jax.random.PRNGKey(0), 2),
                      jnp.ones((2, N + 1), jnp.int32))
  opt = optax.adam(3e-3)

  @jax.jit
  def train_step(params, opt_state, i):
    src = batch(jax.random.fold_in(jax.random.PRNGKey(1), i), 64)
    seq = target(src)
    def loss(p):
      logits = model.apply(p, src, seq[:, :-1])[0]
      return optax.softmax_cross_entropy_with_integer_labels(
          logits, seq[:, 1:]).mean()
    value, grads = jax.value_and_grad(loss)(params)
    updates, opt_state = opt.update(grads, opt_state)
    return optax.apply_updates(params, updates), opt_state, value

  opt_state = opt.init(params)
  for i in range(300):
    params, opt_state, value = train_step(params, opt_state, i)
  assert value < 0.05

  @jax.jit
  def copy(params, src):
    mem = model.apply(params, src, jnp.ones((src.shape[0], 1), jnp.int32))[1]
    dec = decoder_lib.Decoder(10, features=32, num_layers=2, num_heads=2,
                              max_positions=N + 2)
    dec_vars = {'params': params['params']['Decoder_0']}
    step, cache = decoder_lib.stepper(dec, dec_vars, mem, max_length=N + 2)
    return decoding.greedy(step, cache, jnp.full((src.shape[0], 1), BOS),
                           max_length=N + 2, eos_id=EOS)

  src = batch(jax.random.PRNGKey(10_000), 64)
  np.testing.assert_array_equal(copy(params, src), target(src))


# ------------------------------------------- The benchmark's PyTorch port ---
@pytest.mark.slow  # PyTorch
def test_the_pytorch_port_decodes_the_same_tokens():
  """benchmarks/torch_decoder.py with the flax weights copied in: the same
  first-step logits and greedy tokens (BOS prompts, all memory real)."""
  torch = pytest.importorskip('torch')
  from benchmarks import torch_decoder  # pylint: disable=g-import-not-at-top
  dec, variables = _model('cross_attention')
  memory, _, _, _ = _inputs()
  mask, prompt = np.ones((B, 5), bool), np.full((B, 1), BOS, np.int32)
  greedy = jax.jit(lambda v: decoding.greedy(
      *decoder_lib.stepper(dec, v, memory, mask, max_length=L), prompt,
      max_length=L, eos_id=EOS))(variables)
  sizes = dict(vocab_size=13, features=16, num_layers=2, num_heads=2,
               mlp_dim=64, max_positions=L, memory_dim=6)
  port = torch_decoder.load_flax_params(torch_decoder.build(sizes),
                                        variables['params']).eval()
  tokens, first = torch_decoder.greedy(
      port, torch.from_numpy(memory), torch.from_numpy(mask),
      torch.from_numpy(prompt.astype(np.int64)), L, EOS)
  want = dec.apply(variables, prompt, memory, mask)[:, 0, 1:]
  np.testing.assert_allclose(first.numpy()[:, 1:], want, atol=1e-4)
  np.testing.assert_array_equal(tokens.numpy(), greedy)
  assert np.sum(np.asarray(greedy) == EOS) >= 1


# ----------------------------------------------------------- Bad input ---
def test_bad_input_is_one_sentence():
  cache, prompt = _bigram_cache(1), jnp.array([[BOS, 3, 4]], jnp.int32)
  kw = dict(max_length=6, eos_id=EOS)
  cases = [
      (lambda: decoding.beam_search(_bigram_step, cache, prompt, beam_size=0,
                                    **kw), 'beam_size=0 must be at least 1'),
      (lambda: decoding.greedy(_bigram_step, cache, prompt, max_length=3,
                               eos_id=EOS),
       'max_length=3 leaves no room to generate after a 3-token prompt'),
      (lambda: decoding.sample(_bigram_step, cache, prompt,
                               jax.random.PRNGKey(0), temperature=0.0, **kw),
       'temperature=0.0 must be positive'),
      (lambda: jax.eval_shape(lambda c, p: decoding.sample(
          _bigram_step, c, p, jax.random.PRNGKey(0), top_k=7, **kw), cache,
                              prompt), 'top_k=7 is more than the 6 tokens'),
      (lambda: decoding.greedy(_bigram_step, cache, prompt, max_length=6,
                               eos_id=0), 'eos_id and pad_id are both 0'),
  ]
  memory, _, prompt, _ = _inputs()
  dec = _decoder('prefix')
  init = lambda d, tokens: jax.eval_shape(d.init, jax.random.PRNGKey(0),
                                          tokens, memory)
  cases += [
      (lambda: init(dec.clone(conditioning='film'), prompt),
       "unknown decoder conditioning 'film'; choose one of: cross_attention,"
       ' prefix.'),
      (lambda: init(dec, np.ones((B, L + 1), np.int32)),
       f'a text of {L + 1} tokens is longer than the decoder\'s '
       f'max_positions={L}'),
      (lambda: init(dec.clone(num_heads=3), prompt),
       'decoder width 16 does not split over 3 heads'),
  ]
  for fn, sentence in cases:
    with pytest.raises(errors.UserError) as e:
      fn()
    assert sentence in str(e.value)
    assert str(e.value).count('. ') == 0 and str(e.value).endswith('.')
