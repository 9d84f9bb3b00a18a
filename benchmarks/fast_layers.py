"""A/B of `mmfusion.conv` inside the real encoders, without editing them.

The image and audio encoders (mmfusion/encoders/image.py, audio.py) build
`conv.Conv`, `conv.max_pool` and `conv.GroupNorm`. Under
`flax_layers({'conv', 'pool', 'norm'})` they build flax's `nn.Conv`,
`nn.max_pool` and `nn.GroupNorm` instead: what they computed before the
switch, with the same parameter trees. The encoders resolve `conv.<name>`
when a module runs, so models built and traced inside the block use flax's.
"""

import contextlib
import types

import flax.linen as nn

from mmfusion import conv
from mmfusion.encoders import audio, image

LAYERS = {'conv': ('Conv', nn.Conv), 'pool': ('max_pool', nn.max_pool),
          'norm': ('GroupNorm', nn.GroupNorm)}


class _Conv(types.ModuleType):
  """mmfusion.conv with a few names replaced by flax's."""

  def __init__(self, replaced: dict):
    super().__init__('mmfusion.conv')
    self.__dict__.update(replaced)

  def __getattr__(self, name):
    return getattr(conv, name)


@contextlib.contextmanager
def flax_layers(which):
  unknown = set(which) - set(LAYERS)
  if unknown:
    raise ValueError(f'unknown layers {sorted(unknown)}; pick from '
                     f'{sorted(LAYERS)}')
  proxy = _Conv(dict(LAYERS[w] for w in which))
  modules = (image, audio)
  saved = [m.conv for m in modules]
  try:
    for m in modules:
      m.conv = proxy
    yield
  finally:
    for m, old in zip(modules, saved):
      m.conv = old
