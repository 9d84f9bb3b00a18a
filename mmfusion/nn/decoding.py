"""Decoding from any autoregressive model with a cache: greedy, beam search,
temperature / top-k sampling.

Each function is pure and jittable, loops over tokens with one
`lax.while_loop` (no Python loop per token) and works for any batch size.
They take `step(tokens_BxT, cache) -> (logits_BxTxV, cache)`, the model's
incremental call (`mmfusion.nn.decoder.stepper` makes one from a `Decoder`),
and the cache it starts from, under this contract:
  - tokens equal to `pad_id` are ignored: they take no cache slot and do not
    advance the row, so a [B, P] prompt right-padded to its longest row is
    prefilled in one call, and a finished row feeds `pad_id` and stays put;
  - every leaf of the cache has the batch as its leading axis (beam search
    repeats it per beam and gathers it when beams are reordered);
  - the cache has room for `max_length` tokens.

The prompt (BOS, or BOS and prompt tokens) is each row's start; rows are
right-padded with `pad_id` and hold at least one real token. The result has
`max_length` tokens per row: the prompt, then the generated tokens up to and
including `eos_id`, then `pad_id`. `pad_id` is never generated: its logit is
masked out before every choice, so log-probabilities are over the other
tokens.

Legend: B batch, P prompt length, L max_length, V vocabulary, K beams,
N = 2K beam candidates.
"""

import jax
from jax import lax
import jax.numpy as jnp

from mmfusion.runtime import errors

NEG_INF = -1.0e9  # a log-probability no real sequence reaches; not -inf, so
# that sums and divisions of it stay finite


# ------------------------------------------------------------- Shared ---
def _check(prompt_BxP, max_length: int, eos_id: int, pad_id: int):
  p = prompt_BxP.shape[1]
  if max_length <= p:
    raise errors.UserError(
        f'max_length={max_length} leaves no room to generate after a '
        f'{p}-token prompt; pass max_length of at least {p + 1}.')
  if eos_id == pad_id:
    raise errors.UserError(
        f'eos_id and pad_id are both {eos_id}; give EOS a token id of its '
        f'own.')


def _next(logits_BxV, pad_id):
  """float32 logits of the next token; padding is never generated."""
  pad_V = jnp.arange(logits_BxV.shape[-1]) == pad_id
  return jnp.where(pad_V, NEG_INF, logits_BxV.astype(jnp.float32))


def _prefill(step, cache, prompt_BxP, pad_id):
  """(logits_BxV for each row's first new token, prompt lengths, cache)."""
  length_B = jnp.sum(prompt_BxP != pad_id, axis=1, dtype=jnp.int32)
  logits_BxPxV, cache = step(prompt_BxP, cache)
  last_Bx1xV = jnp.take_along_axis(
      logits_BxPxV, jnp.maximum(length_B - 1, 0)[:, None, None], axis=1)
  return _next(last_Bx1xV[:, 0], pad_id), length_B, cache


def _padded(prompt_BxP, max_length, pad_id):
  p = prompt_BxP.shape[1]
  return jnp.pad(prompt_BxP, ((0, 0), (0, max_length - p)),
                 constant_values=pad_id)


def _put(seq_Bx_xL, pos_B, tok_Bx_):
  """seq with tok written at each row's position."""
  at = jnp.arange(seq_Bx_xL.shape[-1]) == pos_B.reshape(
      pos_B.shape + (1,) * (seq_Bx_xL.ndim - 1))
  return jnp.where(at, tok_Bx_[..., None], seq_Bx_xL)


def _from_parents(x_BKx_, parent_BxK):
  """Row b*K + j of a beam-major array replaced by row b*K + parent[b, j]:
  each beam takes its parent's cache. K - 1 selects that fuse into one
  elementwise pass (XLA:CPU's gather of the whole cache is the slower way)."""
  b, k = parent_BxK.shape
  x_BxKx_ = x_BKx_.reshape((b, k) + x_BKx_.shape[1:])
  at = lambda i: (parent_BxK == i).reshape((b, k) + (1,) * (x_BKx_.ndim - 1))
  out = x_BxKx_[:, :1]
  for i in range(1, k):
    out = jnp.where(at(i), x_BxKx_[:, i:i + 1], out)
  return jnp.broadcast_to(out, x_BxKx_.shape).reshape(x_BKx_.shape)


def _rows(done_B, old, new):
  """`old` in the rows that are done, `new` elsewhere, for every leaf."""
  def pick(o, n):
    return jnp.where(done_B.reshape(done_B.shape + (1,) * (n.ndim - 1)), o, n)
  return jax.tree.map(pick, old, new)


def _one_at_a_time(step, cache, prompt_BxP, choose, max_length, eos_id,
                   pad_id):
  """Tokens [B, L], each new one `choose(logits_BxV, i)` at loop step i."""
  logits_BxV, length_B, cache = _prefill(step, cache, prompt_BxP, pad_id)

  def body(state):
    i, seq_BxL, pos_B, done_B, logits_BxV, cache = state
    tok_B = jnp.where(done_B, pad_id, choose(logits_BxV, i)).astype(
        seq_BxL.dtype)
    seq_BxL = _put(seq_BxL, pos_B, tok_B)  # a done row writes pad on pad
    pos_B = pos_B + (~done_B).astype(pos_B.dtype)
    done_B = done_B | (tok_B == eos_id) | (pos_B >= max_length)
    logits_Bx1xV, cache = step(jnp.where(done_B, pad_id, tok_B)[:, None],
                               cache)
    return (i + 1, seq_BxL, pos_B, done_B, _next(logits_Bx1xV[:, 0], pad_id),
            cache)

  state = (jnp.int32(0), _padded(prompt_BxP, max_length, pad_id), length_B,
           length_B >= max_length, logits_BxV, cache)
  state = lax.while_loop(lambda s: ~jnp.all(s[3]), body, state)
  return state[1]


# ---------------------------------------------------- Greedy, sampling ---
def greedy(step, cache, prompt_BxP, *, max_length: int, eos_id: int,
           pad_id: int = 0):
  """The most likely next token at every step: tokens [B, max_length]."""
  _check(prompt_BxP, max_length, eos_id, pad_id)
  choose = lambda logits_BxV, i: jnp.argmax(logits_BxV, axis=-1)
  return _one_at_a_time(step, cache, prompt_BxP, choose, max_length, eos_id,
                        pad_id)


def sample(step, cache, prompt_BxP, key, *, max_length: int, eos_id: int,
           pad_id: int = 0, temperature: float = 1.0, top_k: int = 0):
  """Ancestral sampling from softmax(logits / temperature), restricted to
  the `top_k` most likely tokens when top_k > 0 (Fan et al. 2018); step i
  draws with `fold_in(key, i)`. Tokens [B, max_length]."""
  _check(prompt_BxP, max_length, eos_id, pad_id)
  if not temperature > 0:
    raise errors.UserError(
        f'temperature={temperature} must be positive; use greedy decoding '
        f'for the temperature-0 limit.')
  if top_k < 0:
    raise errors.UserError(
        f'top_k={top_k} must be 0 (the whole vocabulary) or a positive '
        f'number of tokens.')

  def choose(logits_BxV, i):
    k = jax.random.fold_in(key, i)
    if not top_k:
      return jax.random.categorical(k, logits_BxV / temperature)
    if top_k > logits_BxV.shape[-1]:
      raise errors.UserError(
          f'top_k={top_k} is more than the {logits_BxV.shape[-1]} tokens of '
          f'the vocabulary; pass top_k of at most {logits_BxV.shape[-1]}.')
    top_BxK, index_BxK = lax.top_k(logits_BxV, top_k)
    j_B = jax.random.categorical(k, top_BxK / temperature)
    return jnp.take_along_axis(index_BxK, j_B[:, None], axis=1)[:, 0]

  return _one_at_a_time(step, cache, prompt_BxP, choose, max_length, eos_id,
                        pad_id)


# --------------------------------------------------------- Beam search ---
def brevity(length, alpha: float):
  """Wu et al. 2016's length penalty ((5 + |Y|) / 6) ** alpha (T5's
  `brevity_penalty`); a hypothesis scores log P(Y) / brevity(|Y|)."""
  return ((5.0 + length) / 6.0) ** alpha


def beam_search(step, cache, prompt_BxP, *, beam_size: int, max_length: int,
                eos_id: int, pad_id: int = 0, length_penalty: float = 0.6):
  """Beam search with a pool of finished hypotheses (Wu et al. 2016).

  Each step extends the K live beams to their 2K best continuations: those
  that end in `eos_id` or fill `max_length` go to the finished pool, scored
  log P / brevity(generated length, `length_penalty`) and kept there while
  the search goes on; the K best of the others live on. A row stops when its
  K-th best finished score beats what any live beam could still reach.
  Returns (tokens [B, K, max_length], scores [B, K]), best first.
  """
  _check(prompt_BxP, max_length, eos_id, pad_id)
  if beam_size < 1:
    raise errors.UserError(
        f'beam_size={beam_size} must be at least 1 (1 searches like greedy '
        f'decoding when length_penalty=0).')
  k = beam_size
  logits_BxV, length_B, cache = _prefill(step, cache, prompt_BxP, pad_id)
  b, v = logits_BxV.shape
  n = min(2 * k, k * v)
  cache = jax.tree.map(lambda x: jnp.repeat(x, k, axis=0), cache)
  logp_BxKxV = jnp.repeat(jax.nn.log_softmax(logits_BxV)[:, None], k, axis=1)
  seq_BxKxL = jnp.repeat(_padded(prompt_BxP, max_length, pad_id)[:, None], k,
                         axis=1)
  # Only beam 0 is live at the start, so the first step expands it alone.
  alive_BxK = jnp.where(jnp.arange(k) == 0, 0.0, NEG_INF) * jnp.ones((b, 1))
  finished_BxK = jnp.full((b, k), NEG_INF)
  max_new_B = (max_length - length_B).astype(jnp.float32)

  def top(scores_BxN, seqs_BxNxL, count):
    best, index = lax.top_k(scores_BxN, count)
    return best, jnp.take_along_axis(seqs_BxNxL, index[..., None], axis=1)

  def body(state):
    (alive_BxK, alive_seq, fin_BxK, fin_seq, pos_B, done_B, logp_BxKxV,
     cache) = state
    cand_BxN, index_BxN = lax.top_k(
        (alive_BxK[..., None] + logp_BxKxV).reshape(b, k * v), n)
    parent_BxN, tok_BxN = index_BxN // v, index_BxN % v
    seq_BxNxL = jnp.take_along_axis(alive_seq, parent_BxN[..., None], axis=1)
    seq_BxNxL = _put(seq_BxNxL, pos_B, tok_BxN.astype(seq_BxNxL.dtype))
    new_len_B = (pos_B - length_B + 1).astype(jnp.float32)
    ends_BxN = (tok_BxN == eos_id) | (pos_B + 1 >= max_length)[:, None]
    # Finished pool: the K best of the old pool and of the new endings that
    # rank among this step's K best candidates (as Hugging Face's beam
    # search does; so one beam follows the greedy path).
    joins_BxN = ends_BxN & (jnp.arange(n) < k)
    ended_BxN = jnp.where(
        joins_BxN, cand_BxN / brevity(new_len_B, length_penalty)[:, None],
        NEG_INF)
    new_fin, new_fin_seq = top(jnp.concatenate([fin_BxK, ended_BxN], 1),
                               jnp.concatenate([fin_seq, seq_BxNxL], 1), k)
    # Live beams: the K best continuations that did not end.
    new_alive, pick_BxK = lax.top_k(jnp.where(ends_BxN, NEG_INF, cand_BxN), k)
    take = lambda x: jnp.take_along_axis(x, pick_BxK, axis=1)
    new_alive_seq = jnp.take_along_axis(seq_BxNxL, pick_BxK[..., None], 1)
    tok_BxK, parent_BxK = take(tok_BxN), take(parent_BxN)
    new_pos = pos_B + 1
    # The best any live beam could still score: log P only falls, and the
    # penalty is monotone in the length, so its extreme is at an end.
    best_penalty_B = jnp.maximum(brevity(new_len_B + 1, length_penalty),
                                 brevity(max_new_B, length_penalty))
    hopeless_B = new_fin[:, -1] >= new_alive[:, 0] / best_penalty_B
    new_done = done_B | (new_pos >= max_length) | hopeless_B
    new = (new_alive, new_alive_seq, new_fin, new_fin_seq, new_pos)
    old = (alive_BxK, alive_seq, fin_BxK, fin_seq, pos_B)
    alive_BxK, alive_seq, fin_BxK, fin_seq, pos_B = _rows(done_B, old, new)
    cache = jax.tree.map(lambda x: _from_parents(x, parent_BxK), cache)
    feed_BxK = jnp.where(new_done[:, None], pad_id, tok_BxK)
    logits, cache = step(feed_BxK.reshape(b * k, 1).astype(prompt_BxP.dtype),
                         cache)
    logp_BxKxV = jax.nn.log_softmax(_next(logits[:, 0], pad_id)).reshape(
        b, k, v)
    return (alive_BxK, alive_seq, fin_BxK, fin_seq, pos_B, new_done,
            logp_BxKxV, cache)

  state = (alive_BxK, seq_BxKxL, finished_BxK, seq_BxKxL, length_B,
           length_B >= max_length, logp_BxKxV, cache)
  state = lax.while_loop(lambda s: ~jnp.all(s[5]), body, state)
  return state[3], state[2]
