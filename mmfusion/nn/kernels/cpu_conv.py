"""Convolution-stack kernels for XLA:CPU: Conv, max_pool, GroupNorm.

Drop-in replacements for nn.Conv, nn.max_pool and nn.GroupNorm with the same
parameters (names, shapes, initialisers), values and gradients, chosen by
`model.kernels='xla_cpu'` (the default on the CPU backend):

  Conv       nn.Conv (NHWC, 'SAME'/'VALID'/explicit padding, any stride, no
             dilation or groups). Its filter gradient is the sum of XLA's
             filter gradients over chunks of 8 examples (the working set stays
             in cache); with at most 4 input channels (an image or
             spectrogram input) its forward is a sum of shifted windows times
             each tap's weights, one elementwise fusion that both threads
             share, where XLA:CPU runs its convolution on one thread. Under
             `config.vmap` each member's convolution runs ungrouped.
  DepthwiseConv
             nn.Conv with feature_group_count = channels (EfficientNet's,
             MobileNet's): a sum over taps of windows times per-channel
             weights, whose filter gradient reduces every tap over a few
             examples at a time while they are in cache; XLA:CPU's grouped
             convolution gradient is 10-60x slower.
  max_pool   nn.max_pool; non-overlapping windows (window == strides) run
             as reshapes, maxima and selects instead of reduce-window and
             select-and-scatter.
  GroupNorm  nn.GroupNorm (Wu & He 2018) with the statistics summed over the
             positions first, then over each group's channels, and its
             gradient written out (`group_norm`: two reductions over x).

Each is a `jax.custom_vjp`: reverse mode only (no jvp, no second
derivatives); `model.kernels='flax'` gives stock ops that have both.
benchmarks/RESULTS.md and benchmarks/notes.md hold the measurements.
Legend: B batch, H/W spatial, C channels, G groups, K kernel taps, N rows.
"""

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

_DN = ('NHWC', 'HWIO', 'NHWC')
_MAX_CHUNKS = 8  # filter-gradient pieces per conv at most
_TAPS_MAX_CHANNELS = 4  # the taps forward wins up to here (benchmarks/notes.md)


def _pads(in_hw, kernel_hw, strides, padding):
  if isinstance(padding, str):
    return tuple(lax.padtype_to_pads(in_hw, kernel_hw, strides, padding))
  return tuple(tuple(p) for p in padding)


def _conv(x, kernel, strides, pads):
  return lax.conv_general_dilated(x, kernel, strides, pads,
                                  dimension_numbers=_DN)


def _tap_windows(x_BxHxWxC, kernel_hw, strides, pads):
  """Yields (i, j, window [B, h, w, C]): the strided slice of padded x that
  tap (i, j) of a kernel multiplies."""
  kh, kw = kernel_hw
  x = jnp.pad(x_BxHxWxC, ((0, 0), *pads, (0, 0)))
  b, hh, ww, c = x.shape
  sh, sw = strides
  h, w = (hh - kh) // sh + 1, (ww - kw) // sw + 1
  for i in range(kh):
    for j in range(kw):
      end = (b, i + (h - 1) * sh + 1, j + (w - 1) * sw + 1, c)
      yield i, j, lax.slice(x, (0, i, j, 0), end, (1, sh, sw, 1))


def _taps_conv(x_BxHxWxC, kernel_KhxKwxCxO, strides, pads):
  """`_conv` as a sum over taps and input channels of a strided window of x
  times that tap's weights (broadcast over O): one elementwise fusion."""
  y_BxhxwxO = 0
  for i, j, window_Bxhxwxc in _tap_windows(
      x_BxHxWxC, kernel_KhxKwxCxO.shape[:2], strides, pads):
    for ci in range(kernel_KhxKwxCxO.shape[2]):
      tap_O = kernel_KhxKwxCxO[i, j, ci]
      y_BxhxwxO = y_BxhxwxO + window_Bxhxwxc[..., ci:ci + 1] * tap_O
  return y_BxhxwxO


def _filter_grad(x_BxHxWxC, dy_BxhxwxO, kernel_shape, strides, pads):
  """XLA's filter gradient of `_conv` as a function of (x, dy)."""
  zeros = jnp.zeros(kernel_shape, dy_BxhxwxO.dtype)
  return jax.vjp(lambda k: _conv(x_BxHxWxC, k, strides, pads),
                 zeros)[1](dy_BxhxwxO)[0]


def _chunked_filter_grad(x, dy, kernel_shape, strides, pads, chunk):
  """The filter gradient summed over pieces of `chunk` examples."""
  b = x.shape[0]
  if not chunk or b <= chunk or kernel_shape[2] < 8:  # few input channels:
    return _filter_grad(x, dy, kernel_shape, strides, pads)  # one is as fast
  chunk = max(chunk, -(-b // _MAX_CHUNKS))  # bounds the ops to compile
  # Separate ops on slices of the batch, not a scan or vmap: XLA:CPU runs a
  # convolution inside a loop body on a slow generic path.
  return sum(_filter_grad(x[i:i + chunk], dy[i:i + chunk], kernel_shape,
                          strides, pads) for i in range(0, b, chunk))


def _members_unrolled(fn):
  """`fn(a, b)` (two arrays; `b` the kernel, or for the filter gradient the
  output gradient: per member under config.vmap) whose vmap over a batched `b`
  runs one unbatched `fn` per member instead of one batched op.

  Under `config.vmap` every member has its own kernel and, past the first
  layer, its own activations. Batching both turns a convolution into a
  grouped one (feature_group_count = members), which XLA:CPU runs several
  times slower than the members' convolutions one after another; batching the
  kernel alone folds the members into the output channels, whose
  member-major relayout afterwards costs more than the convolution. A
  batched `a` alone (shared kernel) is folded into the batch: plain vmap.
  """
  wrapped = jax.custom_batching.custom_vmap(fn)

  @wrapped.def_vmap
  def _rule(axis_size, in_batched, a, b):
    a_batched, b_batched = in_batched
    if not b_batched:
      return jax.vmap(fn, in_axes=(0, None))(a, b), True
    return jnp.stack([wrapped(a[i] if a_batched else a, b[i])
                      for i in range(axis_size)]), True

  return wrapped


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def conv2d(x_BxHxWxC, kernel_KhxKwxCxO, strides, pads, chunk: int = 8,
           taps: bool = False):
  """lax.conv_general_dilated (NHWC, HWIO; `pads` explicit (lo, hi) pairs)
  whose filter gradient sums per-chunk gradients of `chunk` examples each,
  whose forward with `taps` and at most 4 input channels is `_taps_conv`,
  and whose vmap over members with their own kernels stays ungrouped."""
  few_channels = kernel_KhxKwxCxO.shape[2] <= _TAPS_MAX_CHANNELS
  forward = _taps_conv if taps and few_channels else _conv
  return _members_unrolled(functools.partial(
      forward, strides=strides, pads=pads))(x_BxHxWxC, kernel_KhxKwxCxO)


def _conv2d_fwd(x, kernel, strides, pads, chunk, taps):
  return conv2d(x, kernel, strides, pads, chunk, taps), (x, kernel)


def _conv2d_bwd(strides, pads, chunk, taps, res, dy_BxhxwxO):
  del taps  # both gradients are XLA's: its filter gradient is the faster one
  x, kernel = res
  x_shape = x.shape  # a convolution is linear in x: any point serves
  input_grad = lambda dy, k: jax.vjp(
      lambda x_: _conv(x_, k, strides, pads),
      jnp.zeros(x_shape, dy.dtype))[1](dy)[0]
  filter_grad = functools.partial(
      _chunked_filter_grad, kernel_shape=kernel.shape, strides=strides,
      pads=pads, chunk=chunk)
  return (_members_unrolled(input_grad)(dy_BxhxwxO, kernel),
          _members_unrolled(filter_grad)(x, dy_BxhxwxO))


conv2d.defvjp(_conv2d_fwd, _conv2d_bwd)


def _depthwise_taps(x_BxHxWxC, kernel_KhxKwx1xC, strides, pads):
  """Depthwise convolution (feature_group_count = C) as a sum over taps of a
  strided window of x times that tap's per-channel weights."""
  y_BxhxwxC = 0
  for i, j, window_BxhxwxC in _tap_windows(
      x_BxHxWxC, kernel_KhxKwx1xC.shape[:2], strides, pads):
    y_BxhxwxC = y_BxhxwxC + window_BxhxwxC * kernel_KhxKwx1xC[i, j, 0]
  return y_BxhxwxC


def _depthwise_filter_grad(x_BxHxWxC, dy_BxhxwxC, kernel_shape, strides, pads,
                           chunk):
  """[Kh, Kw, 1, C]: per tap, the sum over positions of its window of x
  times dy, computed `chunk` examples at a time (lax.map), so that x and dy
  stay in cache across the Kh*Kw taps instead of streaming once per tap."""
  b = x_BxHxWxC.shape[0]
  chunk = max(c for c in range(1, min(chunk, b) + 1) if b % c == 0)
  split = lambda a: a.reshape(b // chunk, chunk, *a.shape[1:])

  def taps_of(args):
    x, dy = args
    return jnp.stack([jnp.sum(window * dy, axis=(0, 1, 2)) for _, _, window
                      in _tap_windows(x, kernel_shape[:2], strides, pads)])

  per_chunk_NxTxC = lax.map(taps_of, (split(x_BxHxWxC), split(dy_BxhxwxC)))
  return jnp.sum(per_chunk_NxTxC, 0).reshape(kernel_shape)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def depthwise_conv2d(x_BxHxWxC, kernel_KhxKwx1xC, strides, pads,
                     chunk: int = 4):
  """lax.conv_general_dilated with feature_group_count = C (NHWC, HWIO with
  I = 1), as `_depthwise_taps`; its filter gradient `_depthwise_filter_grad`.
  Elementwise throughout, so a vmap over members stays ungrouped."""
  return _depthwise_taps(x_BxHxWxC, kernel_KhxKwx1xC, strides, pads)


def _depthwise_fwd(x, kernel, strides, pads, chunk):
  return depthwise_conv2d(x, kernel, strides, pads, chunk), (x, kernel)


def _depthwise_bwd(strides, pads, chunk, res, dy_BxhxwxC):
  x, kernel = res
  # Linear in x: the input gradient is the transposed taps (pads of dy).
  _, input_vjp = jax.vjp(
      lambda x_: _depthwise_taps(x_, kernel, strides, pads), x)
  return (input_vjp(dy_BxhxwxC)[0],
          _depthwise_filter_grad(x, dy_BxhxwxC, kernel.shape, strides, pads,
                                 chunk))


depthwise_conv2d.defvjp(_depthwise_fwd, _depthwise_bwd)


class _ConvLike(nn.Module):
  """nn.Conv's fields, and its parameters declared as it declares them."""
  features: int
  kernel_size: Sequence[int]
  strides: int | Sequence[int] = 1
  padding: str | Sequence[tuple[int, int]] = 'SAME'
  use_bias: bool = True
  dtype: Any = None
  param_dtype: Any = jnp.float32
  kernel_init: Any = nn.initializers.lecun_normal()
  bias_init: Any = nn.initializers.zeros_init()

  def _inputs(self, x_BxHxWxC, kernel_in: int):
    """(x, kernel [kh, kw, kernel_in, features], bias or None, strides,
    pads), promoted to the module's dtype."""
    kh, kw = tuple(self.kernel_size)
    s = ((self.strides,) * 2 if isinstance(self.strides, int)
         else tuple(self.strides))
    kernel = self.param('kernel', self.kernel_init,
                        (kh, kw, kernel_in, self.features), self.param_dtype)
    bias = (self.param('bias', self.bias_init, (self.features,),
                       self.param_dtype) if self.use_bias else None)
    x, kernel, bias = nn.dtypes.promote_dtype(x_BxHxWxC, kernel, bias,
                                             dtype=self.dtype)
    return x, kernel, bias, s, _pads(x.shape[1:3], (kh, kw), s, self.padding)


class DepthwiseConv(_ConvLike):
  """nn.Conv(features, kernel_size, ..., feature_group_count=features) on
  [B, H, W, features]: the same `kernel` [kh, kw, 1, features] and `bias`,
  values and gradients, where XLA:CPU's grouped convolution takes seconds for
  a filter gradient that this takes tens of ms for (benchmarks/notes.md)."""
  filter_grad_chunk: int = 4  # examples per filter-gradient step

  @nn.compact
  def __call__(self, x_BxHxWxC):
    if x_BxHxWxC.ndim != 4 or x_BxHxWxC.shape[-1] != self.features:
      raise ValueError(f'cpu_conv.DepthwiseConv({self.features}) takes '
                       f'[B, H, W, {self.features}] inputs, got shape '
                       f'{x_BxHxWxC.shape}.')
    x, kernel, bias, s, pads = self._inputs(x_BxHxWxC, 1)
    y = depthwise_conv2d(x, kernel, s, pads, self.filter_grad_chunk)
    return y if bias is None else y + bias


class Conv(_ConvLike):
  """2D convolution, NHWC; parameters `kernel` [kh, kw, C, O] and `bias` [O]
  as nn.Conv's (and auto-named `Conv_<i>` like it, so parameter trees match).
  The filter gradient is summed over chunks of the batch, and a layer with at
  most 4 input channels runs its forward as `_taps_conv`."""
  filter_grad_chunk: int = 8  # examples per filter-gradient piece; 0: one
  taps: bool = True  # forward as `_taps_conv` with at most 4 input channels

  @nn.compact
  def __call__(self, x_BxHxWxC):
    if x_BxHxWxC.ndim != 4:
      raise ValueError(f'cpu_conv.Conv takes [B, H, W, C] inputs, got shape '
                       f'{x_BxHxWxC.shape}; use nn.Conv for other ranks.')
    x, kernel, bias, s, pads = self._inputs(x_BxHxWxC, x_BxHxWxC.shape[-1])
    y = conv2d(x, kernel, s, pads, self.filter_grad_chunk, self.taps)
    return y if bias is None else y + bias


def _windows(x_BxHxWxC, k: int, padding: str):
  """[B, h, k, w, k, C] non-overlapping k x k windows; SAME pads with -inf."""
  _, hh, ww, _ = x_BxHxWxC.shape
  if padding == 'VALID':
    x = x_BxHxWxC[:, :hh - hh % k, :ww - ww % k]
  else:
    pads = lax.padtype_to_pads((hh, ww), (k, k), (k, k), padding)
    x = jnp.pad(x_BxHxWxC, ((0, 0), *pads, (0, 0)),
                constant_values=-jnp.inf)
  b, h, w, c = x.shape
  return x.reshape(b, h // k, k, w // k, k, c)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def _pool(x_BxHxWxC, k: int, padding: str):
  return _pool_fwd(x_BxHxWxC, k, padding)[0]


def _pool_fwd(x, k, padding):
  """Window maxima, and which tap of each window is the first maximum in
  row-major order (XLA's select-and-scatter gives the gradient to that one)."""
  windows = _windows(x, k, padding)
  taps = [windows[:, :, i, :, j] for i in range(k) for j in range(k)]
  y = functools.reduce(jnp.maximum, taps)
  first_BxhxwxC = jnp.full(y.shape, k * k - 1, jnp.int8)
  for t in reversed(range(k * k - 1)):
    first_BxhxwxC = jnp.where(taps[t] == y, jnp.int8(t), first_BxhxwxC)
  return y, (first_BxhxwxC, x.shape)


def _pool_bwd(k, padding, res, dy_BxhxwxC):
  first_BxhxwxC, (_, hh, ww, _) = res
  b, h, w, c = dy_BxhxwxC.shape
  tap_1xkx1xk = (k * jnp.arange(k, dtype=jnp.int8)[:, None, None] +
                 jnp.arange(k, dtype=jnp.int8)[None, None, :])[None]
  dx = jnp.where(first_BxhxwxC[:, :, None, :, None] == tap_1xkx1xk[..., None],
                 dy_BxhxwxC[:, :, None, :, None], 0)  # [B, h, k, w, k, C]
  dx = dx.astype(dy_BxhxwxC.dtype).reshape(b, h * k, w * k, c)
  if padding == 'VALID':
    return (jnp.pad(dx, ((0, 0), (0, hh - h * k), (0, ww - w * k), (0, 0))),)
  (top, _), (left, _) = lax.padtype_to_pads((hh, ww), (k, k), (k, k), padding)
  return (dx[:, top:top + hh, left:left + ww],)


_pool.defvjp(_pool_fwd, _pool_bwd)


def max_pool(x_BxHxWxC, window_shape=(2, 2), strides=None, padding='VALID'):
  """nn.max_pool; square windows with strides == window take the fast path."""
  strides = tuple(strides or window_shape)
  k = window_shape[0]
  fast = (x_BxHxWxC.ndim == 4 and tuple(window_shape) == (k, k) and
          strides == (k, k) and padding in ('SAME', 'VALID') and
          jnp.issubdtype(x_BxHxWxC.dtype, jnp.floating))
  if not fast:
    return nn.max_pool(x_BxHxWxC, tuple(window_shape), strides, padding)
  return _pool(x_BxHxWxC, k, padding)


def _group_stats(x_BxNxC, groups: int, epsilon: float):
  """Per example and group: mean and 1/sqrt(variance + epsilon), [B, G] each.
  Positions are summed first (a contiguous reduction), then channels."""
  b, n, c = x_BxNxC.shape
  count = n * (c // groups)
  mean_BxG = jnp.sum(x_BxNxC, axis=1).reshape(b, groups, -1).sum(-1) / count
  squares_BxG = jnp.sum(jnp.square(x_BxNxC), axis=1).reshape(
      b, groups, -1).sum(-1) / count
  var_BxG = jnp.maximum(squares_BxG - jnp.square(mean_BxG), 0)
  return mean_BxG, lax.rsqrt(var_BxG + epsilon)


def _per_channel(v_BxG, c: int):
  """[B, G] -> [B, 1, C]: each group's value on its channels."""
  return jnp.repeat(v_BxG, c // v_BxG.shape[1], axis=1)[:, None, :]


def _normalized(x_BxNxC, mean_BxG, rstd_BxG):
  c = x_BxNxC.shape[-1]
  return (x_BxNxC - _per_channel(mean_BxG, c)) * _per_channel(rstd_BxG, c)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def group_norm(x_BxNxC, scale_C, bias_C, groups: int, epsilon: float):
  """Group normalization of float32 [B, N, C] over (N, C/G), then scale and
  shift; its gradient takes two reductions over x, not autodiff's six."""
  return _group_norm_fwd(x_BxNxC, scale_C, bias_C, groups, epsilon)[0]


def _group_norm_fwd(x_BxNxC, scale_C, bias_C, groups, epsilon):
  mean_BxG, rstd_BxG = _group_stats(x_BxNxC, groups, epsilon)
  y = _normalized(x_BxNxC, mean_BxG, rstd_BxG) * scale_C + bias_C
  return y, (x_BxNxC, scale_C, mean_BxG, rstd_BxG)


def _group_norm_bwd(groups, epsilon, res, dy_BxNxC):
  del epsilon  # in rstd already
  x, scale_C, mean_BxG, rstd_BxG = res
  b, n, c = x.shape
  count = n * (c // groups)
  xhat_BxNxC = _normalized(x, mean_BxG, rstd_BxG)
  dy_sum_BxC = jnp.sum(dy_BxNxC, axis=1)
  dy_xhat_BxC = jnp.sum(dy_BxNxC * xhat_BxNxC, axis=1)
  group_mean = lambda v_BxC: _per_channel(
      (v_BxC * scale_C).reshape(b, groups, -1).sum(-1) / count, c)
  # d/dx of scale * xhat: xhat's mean and its projection on xhat removed.
  dx = _per_channel(rstd_BxG, c) * (
      dy_BxNxC * scale_C - group_mean(dy_sum_BxC) -
      xhat_BxNxC * group_mean(dy_xhat_BxC))
  return dx, jnp.sum(dy_xhat_BxC, axis=0), jnp.sum(dy_sum_BxC, axis=0)


group_norm.defvjp(_group_norm_fwd, _group_norm_bwd)


class GroupNorm(nn.Module):
  """nn.GroupNorm(num_groups) over [B, ..., C]: same `scale` and `bias`
  parameters, same fast variance E[x^2] - E[x]^2 in float32, and a gradient
  written out (`group_norm`)."""
  num_groups: int = 32
  epsilon: float = 1e-6
  dtype: Any = None
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    b, c, g = x.shape[0], x.shape[-1], self.num_groups
    if c % g:
      raise ValueError(f'{c} channels do not split into {g} groups.')
    scale = self.param('scale', nn.initializers.ones_init(), (c,),
                       self.param_dtype)
    bias = self.param('bias', nn.initializers.zeros_init(), (c,),
                      self.param_dtype)
    y_BxNxC = group_norm(x.reshape(b, -1, c).astype(jnp.float32),
                         scale.astype(jnp.float32), bias.astype(jnp.float32),
                         g, self.epsilon)
    return y_BxNxC.reshape(x.shape).astype(self.dtype or x.dtype)
