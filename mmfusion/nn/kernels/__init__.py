"""Kernel sets: the ops that encoders and fusion modules are built from.

`model.kernels` picks one when the model is built, and it is handed down to
every encoder and fusion module like `dtype`; those modules take the ops they
are given and never look at the backend. This package is the one place that
does:

  flax     stock flax/JAX ops (nn.Conv, nn.max_pool, nn.GroupNorm,
           jax.nn.dot_product_attention, grouped nn.Conv for depthwise): every backend, forward-mode and
           higher-order autodiff, the fused attention kernels of GPUs/TPUs.
  xla_cpu  the same layers with forwards, gradients and a vmap rule that are
           fast on XLA:CPU (`cpu_conv`, `cpu_attention`); `jax.custom_vjp`s,
           so reverse mode only. Same parameters, values and gradients.
  auto     `xla_cpu` on the CPU backend, `flax` elsewhere.
"""

import dataclasses
from typing import Any, Callable

import flax.linen as nn
import jax

from mmfusion.nn.kernels import cpu_attention, cpu_conv, stock
from mmfusion.runtime import errors


@dataclasses.dataclass(frozen=True)
class Kernels:
  """One op per slot, each with its flax counterpart's signature."""
  name: str
  conv: Callable[..., nn.Module]  # nn.Conv(features, kernel_size, ...), NHWC
  max_pool: Callable[..., Any]  # nn.max_pool(x, window_shape, strides, padding)
  group_norm: Callable[..., nn.Module]  # nn.GroupNorm(num_groups=..., ...)
  attention: Callable[..., Any]  # flax's attention_fn (MultiHeadDotProduct...)
  # nn.Conv(C, kernel_size, ..., feature_group_count=C) on C channels
  depthwise_conv: Callable[..., nn.Module]


FLAX = Kernels('flax', nn.Conv, nn.max_pool, nn.GroupNorm, stock.attention,
               stock.depthwise_conv)
XLA_CPU = Kernels('xla_cpu', cpu_conv.Conv, cpu_conv.max_pool,
                  cpu_conv.GroupNorm, cpu_attention.dot_product_attention,
                  cpu_conv.DepthwiseConv)
KERNELS = {'flax': FLAX, 'xla_cpu': XLA_CPU}
CHOICES = ('auto',) + tuple(KERNELS)


def resolve(name: str) -> Kernels:
  """The kernel set `model.kernels` names; `auto` asks the default backend."""
  if name == 'auto':
    return XLA_CPU if jax.default_backend() == 'cpu' else FLAX
  if name not in KERNELS:
    raise errors.unknown_name('model.kernels', name, CHOICES)
  return KERNELS[name]
