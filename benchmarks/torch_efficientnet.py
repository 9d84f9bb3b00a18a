"""EfficientNet-Lite in PyTorch (Tan & Le 2019; the TF TPU repo's Lite
variants), the reference for `mmfusion.encoders.efficientnet`.

Written from the paper's table and the TF reference independently of the Flax
port (its own stage table and channel rounding), so the parity test checks
one against the other. Parameter names are those of the packaged checkpoint
(lukemelas/EfficientNet-PyTorch naming), so `load_state_dict(torch.load(
path), strict=True)` takes it. Convolutions pad as TF's 'SAME' (the odd pixel
at the bottom/right), BatchNorm has eps 1e-3, activations are ReLU6.
`forward` takes normalised NCHW images (`normalise`) and returns ImageNet
logits in eval mode. Legend: B batch, C channels, H/W size.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

# (repeats, kernel, stride, expansion, output channels) per stage.
STAGES = [(1, 3, 1, 1, 16), (2, 3, 2, 6, 24), (2, 5, 2, 6, 40),
          (3, 3, 2, 6, 80), (3, 5, 1, 6, 112), (4, 5, 2, 6, 192),
          (1, 3, 1, 6, 320)]
MEAN, STD = 127.0 / 255.0, 128.0 / 255.0  # on [0, 1] pixels


def normalise(x_BxHxWxC_01):
  """[0, 1] NHWC images -> the network's NCHW input."""
  return ((x_BxHxWxC_01 - MEAN) / STD).permute(0, 3, 1, 2).contiguous()


def _round(channels, width):
  scaled = channels * width
  r = max(8, int(scaled + 4) // 8 * 8)
  return r + 8 if r < 0.9 * scaled else r


class SameConv2d(nn.Conv2d):
  """nn.Conv2d with TF 'SAME' padding, worked out from the input's size."""

  def forward(self, x):
    pads = []
    for size, k, s in zip(reversed(x.shape[2:]), reversed(self.kernel_size),
                          reversed(self.stride)):  # W first, as F.pad wants
      total = max((math.ceil(size / s) - 1) * s + k - size, 0)
      pads += [total // 2, total - total // 2]
    return super().forward(F.pad(x, pads))


def _bn(c):
  return nn.BatchNorm2d(c, eps=1e-3)


class MBConv(nn.Module):
  """Inverted residual without squeeze-excitation."""

  def __init__(self, cin, cout, kernel, stride, expand):
    super().__init__()
    c = cin * expand
    if expand != 1:
      self._expand_conv = SameConv2d(cin, c, 1, bias=False)
      self._bn0 = _bn(c)
    self._depthwise_conv = SameConv2d(c, c, kernel, stride, groups=c,
                                      bias=False)
    self._bn1 = _bn(c)
    self._project_conv = SameConv2d(c, cout, 1, bias=False)
    self._bn2 = _bn(cout)
    self.skip = stride == 1 and cin == cout

  def forward(self, x):
    y = x
    if hasattr(self, '_expand_conv'):
      y = F.relu6(self._bn0(self._expand_conv(y)))
    y = F.relu6(self._bn1(self._depthwise_conv(y)))
    y = self._bn2(self._project_conv(y))
    return y + x if self.skip else y


class EfficientNetLite(nn.Module):
  """Stem, MBConv stages, 1x1 head to 1280, mean pool, `_fc` to classes."""

  def __init__(self, width=1.0, depth=1.0, num_classes=1000):
    super().__init__()
    self._conv_stem = SameConv2d(3, 32, 3, 2, bias=False)
    self._bn0 = _bn(32)
    blocks, cin = [], 32
    for i, (repeats, k, s, e, c) in enumerate(STAGES):
      if 0 < i < len(STAGES) - 1:  # Lite keeps the first and last stages
        repeats = math.ceil(depth * repeats)
      cout = _round(c, width)
      for j in range(repeats):
        blocks.append(MBConv(cin, cout, k, s if j == 0 else 1, e))
        cin = cout
    self._blocks = nn.ModuleList(blocks)
    self._conv_head = SameConv2d(cin, 1280, 1, bias=False)
    self._bn1 = _bn(1280)
    self._fc = nn.Linear(1280, num_classes)

  def features(self, x_BxCxHxW):
    """The head's feature map [B, 1280, h, w]."""
    x = F.relu6(self._bn0(self._conv_stem(x_BxCxHxW)))
    for block in self._blocks:
      x = block(x)
    return F.relu6(self._bn1(self._conv_head(x)))

  def pooled(self, x_BxCxHxW):
    return self.features(x_BxCxHxW).mean((2, 3))

  def forward(self, x_BxCxHxW):
    return self._fc(self.pooled(x_BxCxHxW))


def from_checkpoint(path, width=1.0, depth=1.0):
  """The model with the .pth state dict at `path` loaded strictly, in eval."""
  net = EfficientNetLite(width, depth)
  net.load_state_dict(torch.load(path, map_location='cpu', weights_only=True),
                      strict=True)
  return net.eval()
