"""Every registered encoder on a tiny input, plus the contracts others rely on."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmfusion.runtime import errors
from mmfusion.encoders import ENCODERS, audio, make_encoder

B = 2
# rbg keys compile parameter initializers ~4x faster than threefry on CPU.
KEY = jax.random.key(0, impl='rbg')
DROPOUT_KEY = jax.random.key(2, impl='rbg')


def _inputs(modality):
  """A tiny batch of one modality (fixed seed)."""
  rng = np.random.default_rng(0)
  if modality == 'vector':
    return rng.normal(size=(B, 5)).astype(np.float32)
  if modality == 'image':
    return rng.uniform(size=(B, 8, 8, 3)).astype(np.float32)
  if modality == 'text':  # second row is padded
    return np.array([[5, 7, 9, 3, 2, 1], [4, 8, 2, 0, 0, 0]], np.int32)
  if modality == 'audio':
    t = np.arange(400) / 16_000
    return np.stack([np.sin(2 * np.pi * 440 * t),
                     rng.normal(size=400)]).astype(np.float32)
  if modality == 'video':
    return rng.uniform(size=(B, 2, 8, 8, 3)).astype(np.float32)
  if modality == 'series':
    return rng.normal(size=(B, 6, 3)).astype(np.float32)
  raise ValueError(modality)


_SPEC = dict(n_fft=64, hop=32, n_mels=16)  # 400 samples -> 11 frames x 16 mels
_ATTN = dict(num_layers=1, num_heads=2, dropout=0.1)
_HF_TINY = dict(hidden_size=8, num_layers=1, num_heads=2, mlp_dim=16)
# name -> (modality, options making it tiny); every registry entry needs one.
TINY = {
    'mlp': ('vector', dict(hidden=(8,), dropout=0.1)),
    'cnn': ('image', dict(channels=(4,), dropout=0.1)),
    'resnet': ('image', dict(stage_sizes=(1, 1), width=4, groups=2)),
    'vit': ('image', dict(patch_size=4, class_token=True, **_ATTN)),
    'efficientnet_lite': ('image', dict(width=0.25, depth=0.25, image_size=8)),
    'hf_vit': ('image', dict(_HF_TINY, image_size=8, patch_size=4)),
    'clip_vision': ('image', dict(_HF_TINY, image_size=8, patch_size=4)),
    'gru': ('text', dict(bidirectional=True, dropout=0.1)),
    'lstm': ('text', dict()),
    'text_transformer': ('text', dict(max_len=16, class_token=True, **_ATTN)),
    'clip_text': ('text', dict(_HF_TINY, vocab_size=16, max_len=12, eos_id=15,
                               pad_id=0)),
    'bert': ('text', dict(vocab_size=16, hidden_size=8, num_layers=1,
                          num_heads=2, mlp_dim=16, max_len=12, dropout=0.1)),
    'audio_cnn': ('audio', dict(channels=(4,), groups=2, **_SPEC)),
    'audio_transformer': ('audio', dict(patch_size=4, **_ATTN, **_SPEC)),
    'speech_embedding': ('audio', dict(hop_frames=76)),  # its fixed network
    'whisper': ('audio', dict(d_model=8, num_layers=1, num_heads=2, mlp_dim=16,
                              max_source_positions=8, max_seconds=None)),
    'video_pool': ('video', dict(frame_options=dict(channels=(4,)))),
    'video_transformer': ('video', dict(frame_encoder='mlp', **_ATTN)),
    'tubelet': ('video', dict(tubelet_size=2, patch_size=4, **_ATTN)),
    'tcn': ('series', dict(num_blocks=2, dropout=0.1)),
    'series_gru': ('series', dict()),
}
D = 8


def _build(name, **overrides):
  assert name in TINY, f'add a tiny config for encoder {name!r} to TINY'
  modality, opts = TINY[name]
  return make_encoder(name, features=D, **{**opts, **overrides}), _inputs(modality)


def _contract_outputs(model, x):
  """Init, a float32 train-mode gradient and a bfloat16 eval, in one jit."""
  w_D = jax.random.normal(jax.random.key(1), (D,))

  def loss(params):
    tokens, mask = model.apply({'params': params}, x, train=True,
                               rngs={'dropout': DROPOUT_KEY})
    return jnp.sum(tokens @ w_D * mask), (tokens, mask)

  @jax.jit  # one compile per encoder keeps the sweep fast on CPU
  def run():
    params = model.init(KEY, x)['params']
    grads, f32_out = jax.grad(loss, has_aux=True)(params)
    bf16_out = model.clone(dtype=jnp.bfloat16).apply({'params': params}, x)
    return params, grads, [f32_out, bf16_out]

  return run()


@pytest.mark.parametrize('name', sorted(ENCODERS))
def test_encoder_contract(name):
  """Shapes, mask, finiteness under jit, bfloat16 compute, gradients to all."""
  model, x = _build(name)
  params, grads, outputs = _contract_outputs(model, x)
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))
  for dtype, (tokens, mask) in zip((jnp.float32, jnp.bfloat16), outputs):
    assert tokens.ndim == 3 and tokens.shape[0] == B and tokens.shape[2] == D
    assert mask.shape == tokens.shape[:2] and mask.dtype == jnp.bool_
    assert tokens.dtype == dtype
    assert np.all(np.isfinite(np.asarray(tokens, np.float32)))
  flat = jax.tree_util.tree_flatten_with_path(grads)[0]
  dead = [jax.tree_util.keystr(k) for k, g in flat if not np.any(np.asarray(g))]
  assert not dead, f'zero gradient for {dead}'


@pytest.mark.parametrize('name', ['gru', 'lstm', 'text_transformer', 'bert',
                                  'clip_text'])
def test_padding_does_not_change_real_tokens(name):
  extra = dict(num_layers=2) if name == 'gru' else {}  # stacked, bidirectional
  model, ids = _build(name, dropout=0.0, **extra)
  padded = np.pad(ids, ((0, 0), (0, 3)))

  @jax.jit
  def run(ids, padded):
    variables = model.init(KEY, padded)
    return model.apply(variables, ids), model.apply(variables, padded)

  (tokens, mask), (tokens_p, mask_p) = run(ids, padded)
  t = tokens.shape[1]
  np.testing.assert_array_equal(mask_p[:, :t], mask)
  assert not np.any(mask_p[:, t:])
  m = np.asarray(mask)[..., None]
  np.testing.assert_allclose(np.asarray(tokens_p[:, :t]) * m,
                             np.asarray(tokens) * m, atol=1e-5)


def test_tcn_is_causal():
  model, x = _build('tcn')
  variables = model.init(KEY, x)
  future = x.copy()
  future[:, 4:] += 1.0
  a, _ = model.apply(variables, x)
  b, _ = model.apply(variables, future)
  np.testing.assert_allclose(a[:, :4], b[:, :4], atol=1e-6)
  assert not np.allclose(a[:, 4:], b[:, 4:])


def test_integer_images_are_scaled_to_unit_range():
  model, x = _build('cnn')
  pixels = (x * 255).round().astype(np.uint8)
  variables = model.init(KEY, x)
  a, _ = model.apply(variables, pixels)
  b, _ = model.apply(variables, pixels.astype(np.float32) / 255)
  np.testing.assert_allclose(a, b, atol=1e-6)


def test_mlp_seed_model_is_one_dense_relu():
  model = make_encoder('mlp', features=64, hidden=())
  x = np.random.default_rng(0).normal(size=(3, 100)).astype(np.float32)
  params = model.init(KEY, x)['params']
  assert list(params) == ['Dense_0']
  w, b = params['Dense_0']['kernel'], params['Dense_0']['bias']
  tokens, mask = model.apply({'params': params}, x)
  np.testing.assert_allclose(tokens[:, 0], np.maximum(x @ w + b, 0), atol=1e-5)
  assert tokens.shape == (3, 1, 64) and np.all(mask)


def _hz_to_mel(f):
  return 2595.0 * np.log10(1.0 + f / 700.0)


def _reference_log_mel(wave, sr, n_fft, hop, n_mels):
  """Loop-by-loop numpy log-mel spectrogram (HTK triangles, periodic Hann)."""
  mel_pts = np.linspace(0, _hz_to_mel(sr / 2), n_mels + 2)
  hz_pts = 700.0 * (10 ** (mel_pts / 2595.0) - 1)
  freqs = np.arange(n_fft // 2 + 1) * sr / n_fft
  fb = np.zeros((len(freqs), n_mels))
  for m in range(n_mels):
    lo, c, hi = hz_pts[m:m + 3]
    for k, f in enumerate(freqs):
      if lo < f <= c:
        fb[k, m] = (f - lo) / (c - lo)
      elif c < f < hi:
        fb[k, m] = (hi - f) / (hi - c)
  window = np.array([0.5 - 0.5 * np.cos(2 * np.pi * n / n_fft)
                     for n in range(n_fft)])
  rows = []
  for start in range(0, len(wave) - n_fft + 1, hop):
    spec = np.fft.rfft(wave[start:start + n_fft] * window)
    rows.append(np.log(np.abs(spec) ** 2 @ fb + 1e-6))
  return np.array(rows), hz_pts[1:-1]


def test_log_mel_matches_numpy_reference_on_a_sine():
  sr, n_fft, hop, n_mels, hz = 16_000, 400, 160, 40, 1000.0
  wave = np.sin(2 * np.pi * hz * np.arange(1600) / sr)
  ref, centers_hz = _reference_log_mel(wave, sr, n_fft, hop, n_mels)
  got = np.asarray(audio.log_mel_spectrogram(
      wave[None].astype(np.float32), sr, n_fft, hop, n_mels))[0]
  assert got.shape == ref.shape == (1 + (1600 - n_fft) // hop, n_mels)
  np.testing.assert_allclose(got, ref, atol=2e-2)
  want = np.argmin(np.abs(_hz_to_mel(centers_hz) - _hz_to_mel(hz)))
  assert np.all(np.argmax(got, axis=-1) == want)


def test_make_encoder_returns_the_registered_class():
  for name, cls in ENCODERS.items():
    assert type(make_encoder(name, features=4)) is cls


def test_make_encoder_rejects_unknown_name():
  with pytest.raises(errors.UserError, match="unknown encoder 'cnnn'.*cnn"):
    make_encoder('cnnn', features=8)


def test_make_encoder_rejects_unknown_option():
  with pytest.raises(errors.UserError,
                     match="encoder 'cnn' has no option 'widht'.*channels"):
    make_encoder('cnn', features=8, widht=3)


def test_config_lists_and_dicts_become_hashable():
  model = make_encoder('video_pool', features=8,
                       frame_options={'channels': [4, 8]})
  assert model.frame_options['channels'] == (4, 8)
  hash(model)  # flax hashes modules when their methods are jitted


def test_bad_frame_encoder_option_is_a_user_error():
  model, x = _build('video_pool', frame_options=dict(chanels=(4,)))
  with pytest.raises(errors.UserError, match="frame encoder 'cnn'"):
    model.init(KEY, x)


def test_too_large_patch_is_a_user_error():
  model, x = _build('vit', patch_size=16)
  with pytest.raises(errors.UserError, match='patch_size'):
    model.init(KEY, x)


def test_pooled_cnn_is_the_mean_of_its_location_tokens():
  model, x = _build('cnn')
  variables = model.init(KEY, x)
  tokens, _ = model.apply(variables, x)
  pooled, mask = model.clone(pool=True).apply(variables, x)
  assert pooled.shape == (B, 1, D) and mask.shape == (B, 1)
  np.testing.assert_allclose(pooled[:, 0], tokens.mean(1), atol=1e-6)
