"""The benchmarked mmfusion models in PyTorch, built from the same config.

`build(model_config, shapes, num_classes)` mirrors `mmfusion.models.
MultimodalModel` layer for layer for the encoders and fusion methods that the
benchmark compares (`PORTED`): same widths, kernel sizes, paddings, pooling,
GroupNorm/LayerNorm epsilons, GELU (tanh form) and top-level parts
(`encoder_<m>`, `fusion`, `head`), so parameter counts match per part; the one
exception is `nn.GRU`, which keeps both bias vectors of the reset and update
gates (2 x features more than flax's GRUCell, same FLOPs). Written the way a
PyTorch user would write them: NCHW convs, `nn.GRU`, `scaled_dot_product_
attention`. Legend: B batch, T tokens, D width, C channels, L text length.
"""

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

PORTED = {'encoders': ('mlp', 'cnn', 'audio_cnn', 'gru'),
          'fusions': ('concat', 'sum', 'tensor', 'bottleneck', 'late_logits',
                      'late_probs', 'late_poe', 'late_weighted',
                      'late_stacking')}


def _opts(cfg: dict, **defaults) -> dict:
  extra = sorted(set(cfg) - set(defaults) - {'name'})
  if extra:
    raise NotImplementedError(f'no PyTorch port of options {extra}')
  return {**defaults, **{k: v for k, v in cfg.items() if k != 'name'}}


def _ones_mask(x):
  return torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)


class Mlp(nn.Module):
  """mmfusion.encoders.vector.Mlp: [B, F] -> one token [B, 1, D]."""

  def __init__(self, in_features, features, hidden=(), dropout=0.0):
    super().__init__()
    widths = [in_features, *hidden, features]
    self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths, widths[1:]))
    self.dropout = nn.Dropout(dropout)

  def forward(self, x):
    x = x.reshape(x.shape[0], -1).float()
    for layer in self.layers[:-1]:
      x = self.dropout(F.relu(layer(x)))
    z = F.relu(self.layers[-1](x))[:, None]
    return z, _ones_mask(z)


def _same_pool(x):
  """flax max_pool((2, 2), strides=(2, 2), padding='SAME')."""
  return F.max_pool2d(x, 2, 2, ceil_mode=True)


class Cnn(nn.Module):
  """mmfusion.encoders.image.Cnn: 3x3 conv, ReLU, 2x2 max-pool per stage."""

  def __init__(self, in_channels, features, channels=(32, 64), pool=False,
               dropout=0.0):
    super().__init__()
    widths = [in_channels, *channels]
    self.convs = nn.ModuleList(nn.Conv2d(a, b, 3, padding=1)
                               for a, b in zip(widths, widths[1:]))
    self.dropout = nn.Dropout(dropout)
    self.out = nn.Linear(widths[-1], features)
    self.pool = pool

  def forward(self, x_BxHxWxC):
    x = x_BxHxWxC.permute(0, 3, 1, 2)  # NCHW
    x = x.float() / 255.0 if not x.is_floating_point() else x
    for conv in self.convs:
      x = _same_pool(F.relu(conv(x)))
    x = self.out(self.dropout(x).flatten(2).transpose(1, 2))  # [B, h*w, D]
    if self.pool:
      x = x.mean(1, keepdim=True)
    return x, _ones_mask(x)


def log_mel(wave_BxS, sample_rate, n_fft, hop, n_mels, eps=1e-6):
  """mmfusion.encoders.audio.log_mel_spectrogram: [B, N, M]."""
  from mmfusion.encoders import audio  # pylint: disable=g-import-not-at-top
  if wave_BxS.shape[-1] < n_fft:
    wave_BxS = F.pad(wave_BxS, (0, n_fft - wave_BxS.shape[-1]))
  window = torch.from_numpy(
      (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)).astype(np.float32))
  frames_BxNxF = wave_BxS.unfold(-1, n_fft, hop) * window
  power_BxNxK = torch.fft.rfft(frames_BxNxF).abs().square()
  fb_KxM = torch.from_numpy(audio.mel_filterbank(sample_rate, n_fft, n_mels).copy())
  return torch.log(power_BxNxK @ fb_KxM + eps)


class AudioCnn(nn.Module):
  """mmfusion.encoders.audio.AudioCnn: log-mel, (conv, GroupNorm, ReLU, pool)s."""

  def __init__(self, features, channels=(32, 64), groups=8, dropout=0.0,
               sample_rate=16_000, n_fft=400, hop=160, n_mels=64):
    super().__init__()
    widths = [1, *channels]
    self.convs = nn.ModuleList(nn.Conv2d(a, b, 3, padding=1)
                               for a, b in zip(widths, widths[1:]))
    self.norms = nn.ModuleList(nn.GroupNorm(math.gcd(groups, c), c, eps=1e-6)
                               for c in channels)
    mels = n_mels
    for _ in channels:
      mels = -(-mels // 2)
    self.dropout = nn.Dropout(dropout)
    self.out = nn.Linear(mels * widths[-1], features)
    self.mel = (sample_rate, n_fft, hop, n_mels)

  def forward(self, wave_BxS):
    x = log_mel(wave_BxS.float(), *self.mel)[:, None]  # [B, 1, N, M]
    for conv, norm in zip(self.convs, self.norms):
      x = _same_pool(F.relu(norm(conv(x))))
    b, c, n, m = x.shape
    x_BxNxMC = x.permute(0, 2, 3, 1).reshape(b, n, m * c)  # flax's NHWC order
    tokens = self.out(self.dropout(x_BxNxMC))
    return tokens, _ones_mask(tokens)


class TextGru(nn.Module):
  """mmfusion.encoders.text.TextGru: embedding + unidirectional GRU stack."""

  def __init__(self, features, vocab_size=256, embed_dim=None, num_layers=1,
               bidirectional=False, dropout=0.0):
    super().__init__()
    if bidirectional:
      raise NotImplementedError('no PyTorch port of a bidirectional TextGru')
    self.embed = nn.Embedding(vocab_size, embed_dim or features)
    self.gru = nn.GRU(embed_dim or features, features, num_layers,
                      batch_first=True, dropout=dropout if num_layers > 1 else 0)
    self.dropout = nn.Dropout(dropout)

  def forward(self, ids_BxL):
    # Right padding: outputs at real positions do not depend on it.
    h_BxLxD, _ = self.gru(self.dropout(self.embed(ids_BxL)))
    return h_BxLxD, ids_BxL != 0


def masked_mean(x_BxTxD, mask_BxT):
  w = mask_BxT[..., None].to(x_BxTxD.dtype)
  return (x_BxTxD * w).sum(1) / w.sum(1).clamp_min(1.0)


def clean_tokens(tokens, masks, present):
  """mmfusion.fusion.common.clean_tokens: invalid tokens zeroed."""
  out = {}
  for m in sorted(tokens):
    valid = masks[m] & present[m][:, None]
    out[m] = (torch.where(valid[..., None], tokens[m], 0.0), valid)
  return out


class Concat(nn.Module):
  """mmfusion.fusion.simple.Concat with features=None."""

  def __init__(self, widths: dict):
    super().__init__()
    self.missing = nn.ParameterDict(
        {m: nn.Parameter(torch.zeros(d)) for m, d in widths.items()})

  def forward(self, tokens, masks, present):
    zs = []
    for m, (x, valid) in clean_tokens(tokens, masks, present).items():
      zs.append(torch.where(present[m][:, None], masked_mean(x, valid),
                            self.missing[m]))
    return torch.cat(zs, -1)


class Sum(nn.Module):
  """mmfusion.fusion.simple.Sum: per-modality Linear, summed over present."""

  def __init__(self, widths: dict, features=None):
    super().__init__()
    self.d = int(features or max(widths.values()))
    self.proj = nn.ModuleDict({m: nn.Linear(w, self.d) for m, w in widths.items()})

  def forward(self, tokens, masks, present):
    total = 0.0
    for m, (x, valid) in clean_tokens(tokens, masks, present).items():
      total = total + torch.where(present[m][:, None],
                                  self.proj[m](masked_mean(x, valid)), 0.0)
    return total


class Tensor(nn.Module):
  """mmfusion.fusion.tensor.TensorFusion (TFN): vec([1; z_1] x ... x [1; z_M])."""

  def __init__(self, widths: dict, features=None, proj_dim=8):
    super().__init__()
    sizes = {m: (proj_dim or w) for m, w in widths.items()}
    self.proj = nn.ModuleDict({m: nn.Linear(w, proj_dim) for m, w in widths.items()}
                              if proj_dim else {})
    k = int(np.prod([e + 1 for e in sizes.values()]))
    self.linear = nn.Linear(k, features) if features else None
    self.d = features or k

  def forward(self, tokens, masks, present):
    t = None
    for m, (x, valid) in clean_tokens(tokens, masks, present).items():
      z = masked_mean(x, valid)
      if m in self.proj:
        z = self.proj[m](z)
      z = torch.where(present[m][:, None], z, 0.0)
      z1 = torch.cat([torch.ones_like(z[:, :1]), z], -1)
      t = z1 if t is None else (t[:, :, None] * z1[:, None, :]).reshape(z1.shape[0], -1)
    return t if self.linear is None else self.linear(t)


def sincos_posemb(t, d):
  pos = torch.arange(t, dtype=torch.float32)[:, None]
  freq = torch.exp(-math.log(10_000.0) * torch.arange(0, d, 2) / d)
  emb = torch.zeros(t, d)
  emb[:, 0::2] = torch.sin(pos * freq)
  emb[:, 1::2] = torch.cos(pos * freq[: d // 2])
  return emb


class Block(nn.Module):
  """mmfusion.layers.Block (pre-LN self-attention + GELU MLP)."""

  def __init__(self, d, num_heads, mlp_dim):
    super().__init__()
    self.ln1, self.ln2 = nn.LayerNorm(d, eps=1e-6), nn.LayerNorm(d, eps=1e-6)
    self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))
    self.fc1, self.fc2 = nn.Linear(d, mlp_dim), nn.Linear(mlp_dim, d)
    self.heads = num_heads

  def forward(self, x_BxTxD, kv_mask_BxT):
    b, t, d = x_BxTxD.shape
    y = self.ln1(x_BxTxD)
    split = lambda z: z.view(b, t, self.heads, d // self.heads).transpose(1, 2)
    att = F.scaled_dot_product_attention(
        split(self.q(y)), split(self.k(y)), split(self.v(y)),
        attn_mask=kv_mask_BxT[:, None, None, :])  # [B, H, T, D/H]
    x_BxTxD = x_BxTxD + self.o(att.transpose(1, 2).reshape(b, t, d))
    y = self.fc2(F.gelu(self.fc1(self.ln2(x_BxTxD)), approximate='tanh'))
    return x_BxTxD + y


def present_mean(x_BxMx_, p_BxM):
  keep = p_BxM.reshape(p_BxM.shape + (1,) * (x_BxMx_.ndim - 2))
  total = torch.where(keep, x_BxMx_, 0.0).sum(1)
  n = p_BxM.sum(1).to(total.dtype).clamp_min(1.0)
  return total / n.reshape(n.shape + (1,) * (total.ndim - 1))


class Bottleneck(nn.Module):
  """mmfusion.fusion.attention.Bottleneck (MBT, Nagrani et al. 2021)."""

  def __init__(self, widths: dict, features=None, num_layers=2,
               fusion_layer=0, n_bottlenecks=4, num_heads=4, mlp_dim=None):
    super().__init__()
    d = int(features or max(widths.values()))
    self.names = sorted(widths)
    self.proj = nn.ModuleDict({m: nn.Linear(widths[m], d) for m in self.names})
    self.blocks = nn.ModuleDict({
        f'{m}_{i}': Block(d, num_heads, mlp_dim or 4 * d)
        for i in range(num_layers) for m in self.names})
    self.norms = nn.ModuleDict({m: nn.LayerNorm(d, eps=1e-6) for m in self.names})
    self.bottleneck = nn.Parameter(0.02 * torch.randn(n_bottlenecks, d))
    self.num_layers, self.fusion_layer, self.d = num_layers, fusion_layer, d

  def forward(self, tokens, masks, present):
    cleaned = clean_tokens(tokens, masks, present)
    x, valid = {}, {}
    for m, (t, v) in cleaned.items():
      x[m] = self.proj[m](t) + sincos_posemb(t.shape[1], self.d)
      valid[m] = v
    b = x[self.names[0]].shape[0]
    p_BxM = torch.stack([present[m] for m in self.names], 1)
    bott = self.bottleneck.expand(b, -1, -1)
    n_ones = torch.ones(bott.shape[:2], dtype=torch.bool)
    for i in range(self.num_layers):
      updates = []
      for m in self.names:
        blk = self.blocks[f'{m}_{i}']
        if i < self.fusion_layer:
          x[m] = blk(x[m], valid[m])
          continue
        t = x[m].shape[1]
        y = blk(torch.cat([x[m], bott], 1), torch.cat([valid[m], n_ones], 1))
        x[m], b_new = y[:, :t], y[:, t:]
        updates.append(b_new)
      if updates:
        new = present_mean(torch.stack(updates, 1), p_BxM)
        bott = torch.where(p_BxM.any(1)[:, None, None], new, bott)
    pooled = [masked_mean(self.norms[m](x[m]), valid[m]) for m in self.names]
    return present_mean(torch.stack(pooled, 1), p_BxM)


class Late(nn.Module):
  """mmfusion.fusion.late: per-modality logits [B, C] -> fused [B, C]."""

  def __init__(self, rule: str, names, num_classes: int, hidden=64,
               inputs='log_probs'):
    super().__init__()
    self.rule, self.names, self.inputs = rule, list(names), inputs
    m, c = len(self.names), num_classes
    if rule == 'late_weighted':
      self.scores = nn.Parameter(torch.zeros(m))
    if rule == 'late_stacking':
      start = -math.log(c) if inputs == 'log_probs' else 1.0 / c
      self.absent = nn.Parameter(torch.full((m, c), start))
      widths = [m * c + m, *(() if hidden is None else (hidden,)), c]
      self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths, widths[1:]))

  def forward(self, logits, present):
    p_MxB = torch.stack([present[m] for m in self.names])
    l_MxBxC = torch.where(p_MxB[..., None],
                          torch.stack([logits[m] for m in self.names]), 0.0)
    if self.rule == 'late_logits':
      return present_mean(l_MxBxC.transpose(0, 1), p_MxB.T)
    if self.rule == 'late_probs':
      inc_MxB = p_MxB | ~p_MxB.any(0, keepdim=True)
      logp = torch.where(inc_MxB[..., None], F.log_softmax(l_MxBxC, -1),
                         -math.inf)
      return torch.logsumexp(logp, 0) - torch.log(inc_MxB.sum(0).float())[:, None]
    if self.rule == 'late_poe':
      return torch.where(p_MxB[..., None], F.log_softmax(l_MxBxC, -1), 0.0).sum(0)
    if self.rule == 'late_weighted':
      w_MxB = self.scores[:, None].expand(p_MxB.shape)
      w_MxB = torch.where(p_MxB, torch.softmax(w_MxB.masked_fill(
          ~p_MxB, torch.finfo(w_MxB.dtype).min), 0), 0.0)
      return torch.einsum('mb,mbc->bc', w_MxB, l_MxBxC)
    base = (F.log_softmax if self.inputs == 'log_probs' else F.softmax)(l_MxBxC, -1)
    q_MxBxC = torch.where(p_MxB[..., None], base, self.absent[:, None, :])
    h = torch.cat([*q_MxBxC, p_MxB.T.float()], -1)
    for layer in self.layers[:-1]:
      h = F.relu(layer(h))
    return self.layers[-1](h)


class Head(nn.Module):
  def __init__(self, in_features, num_classes, hidden=()):
    super().__init__()
    widths = [in_features, *hidden, num_classes]
    self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths, widths[1:]))

  def forward(self, z):
    for layer in self.layers[:-1]:
      z = F.relu(layer(z))
    return self.layers[-1](z)


def _encoder(cfg: dict, shape: tuple):
  name = cfg['name']
  if name == 'mlp':
    return Mlp(int(np.prod(shape)), **_opts(cfg, features=None, hidden=(),
                                            dropout=0.0))
  if name == 'cnn':
    return Cnn(shape[-1], **_opts(cfg, features=None, channels=(32, 64),
                                  pool=False, dropout=0.0))
  if name == 'audio_cnn':
    return AudioCnn(**_opts(cfg, features=None, channels=(32, 64), groups=8,
                            dropout=0.0, sample_rate=16_000, n_fft=400,
                            hop=160, n_mels=64))
  if name == 'gru':
    return TextGru(**_opts(cfg, features=None, vocab_size=256, embed_dim=None,
                           num_layers=1, bidirectional=False, dropout=0.0))
  raise NotImplementedError(f'no PyTorch port of encoder {name!r}')


class MultimodalModel(nn.Module):
  """Encoders -> fusion -> head, as mmfusion.models.MultimodalModel."""

  def __init__(self, model_config, shapes: dict, num_classes: int):
    super().__init__()
    if model_config.get('dtype', 'float32') != 'float32':
      raise NotImplementedError('the PyTorch ports are float32 only')
    encoders = {m: dict(c) for m, c in model_config['encoders'].items()}
    self.names = sorted(encoders)
    for m in self.names:
      self.add_module(f'encoder_{m}', _encoder(encoders[m], shapes[m]))
    widths = {m: int(encoders[m]['features']) for m in self.names}
    fusion = model_config['fusion']
    kwargs = dict(model_config.get('fusion_kwargs') or {})
    hidden = tuple(model_config.get('head_hidden') or ())
    self.late = fusion.startswith('late_')
    if self.late:
      options = {'late_stacking': {'hidden', 'inputs'}}.get(fusion, set())
      if fusion not in PORTED['fusions'] or set(kwargs) - options:
        raise NotImplementedError(f'no PyTorch port of fusion {fusion!r} {kwargs}')
      for m in self.names:
        self.add_module(f'head_{m}', Head(widths[m], num_classes, hidden))
      self.fusion = Late(fusion, self.names, num_classes, **kwargs)
      return
    if fusion == 'concat' and not kwargs:
      self.fusion, width = Concat(widths), sum(widths.values())
    elif fusion == 'sum' and not set(kwargs) - {'features'}:
      self.fusion = Sum(widths, **kwargs)
      width = self.fusion.d
    elif fusion == 'tensor' and not set(kwargs) - {'features', 'proj_dim'}:
      self.fusion = Tensor(widths, **kwargs)
      width = self.fusion.d
    elif fusion == 'bottleneck' and not set(kwargs) & {'dropout'}:
      self.fusion = Bottleneck(widths, **kwargs)
      width = self.fusion.d
    else:
      raise NotImplementedError(f'no PyTorch port of fusion {fusion!r} {kwargs}')
    self.head = Head(width, num_classes, hidden)

  def forward(self, batch):
    tokens, masks, present = {}, {}, {}
    for m in self.names:
      p = batch[f'present/{m}']
      x = batch[m]
      x = torch.where(p.reshape((-1,) + (1,) * (x.ndim - 1)), x, torch.zeros_like(x))
      tokens[m], masks[m] = getattr(self, f'encoder_{m}')(x)
      present[m] = p
    if self.late:
      logits = {m: getattr(self, f'head_{m}')(masked_mean(tokens[m], masks[m]))
                for m in self.names}
      return self.fusion(logits, present)
    return self.head(self.fusion(tokens, masks, present))


def build(model_config, shapes: dict, num_classes: int) -> MultimodalModel:
  """`shapes`: {modality: per-example shape}. Raises NotImplementedError for a
  config with an encoder, fusion or option that has no port here."""
  return MultimodalModel(model_config, shapes, num_classes)


def param_counts(model: nn.Module) -> dict:
  """Parameters per top-level part, as mmfusion.cost.param_counts."""
  counts = {'fusion': 0}
  for name, child in model.named_children():
    counts[name] = sum(p.numel() for p in child.parameters())
  counts['total'] = sum(counts.values())
  return counts


def load_flax_params(model: MultimodalModel, params) -> MultimodalModel:
  """Copies mmfusion parameters into the port (for checking that both compute
  the same logits); returns `model`."""
  t = lambda a: torch.from_numpy(np.array(a, np.float32))

  def linear(layer, p):
    layer.weight.data = t(p['kernel']).reshape(-1, layer.out_features).T.contiguous()
    layer.bias.data = t(p['bias']).reshape(-1)

  def norm(layer, p):
    layer.weight.data, layer.bias.data = t(p['scale']), t(p['bias'])

  def conv2d(layer, p):
    layer.weight.data = t(p['kernel']).permute(3, 2, 0, 1).contiguous()  # OIHW
    layer.bias.data = t(p['bias'])

  for m in model.names:
    enc, p = getattr(model, f'encoder_{m}'), params[f'encoder_{m}']
    if isinstance(enc, (Mlp,)):
      for i, layer in enumerate(enc.layers):
        linear(layer, p[f'Dense_{i}'])
    elif isinstance(enc, (Cnn, AudioCnn)):
      for i, layer in enumerate(enc.convs):
        conv2d(layer, p[f'Conv_{i}'])
      for i, layer in enumerate(getattr(enc, 'norms', ())):
        norm(layer, p[f'GroupNorm_{i}'])
      linear(enc.out, p['Dense_0'])
    elif isinstance(enc, TextGru):
      enc.embed.weight.data = t(p['Embed_0']['embedding'])
      for i in range(enc.gru.num_layers):
        c = p['RnnStack_0'][f'GRUCell_{i}']
        cat = lambda names, key: np.concatenate([c[n][key] for n in names], -1)
        setattr(enc.gru, f'weight_ih_l{i}', nn.Parameter(t(cat(('ir', 'iz', 'in'), 'kernel')).T.contiguous()))
        setattr(enc.gru, f'weight_hh_l{i}', nn.Parameter(t(cat(('hr', 'hz', 'hn'), 'kernel')).T.contiguous()))
        setattr(enc.gru, f'bias_ih_l{i}', nn.Parameter(t(cat(('ir', 'iz', 'in'), 'bias'))))
        setattr(enc.gru, f'bias_hh_l{i}', nn.Parameter(torch.cat([
            torch.zeros(2 * enc.gru.hidden_size), t(c['hn']['bias'])])))
  p = params.get('fusion', {})
  if isinstance(model.fusion, Late):
    for m in model.names:
      for i, layer in enumerate(getattr(model, f'head_{m}').layers):
        linear(layer, params[f'head_{m}'][f'Dense_{i}'])
    if model.fusion.rule == 'late_weighted':
      model.fusion.scores.data = t(p['scores'])
    if model.fusion.rule == 'late_stacking':
      model.fusion.absent.data = t(p['absent_probs'])
      names = ['hidden', 'out'] if len(model.fusion.layers) == 2 else ['out']
      for layer, name in zip(model.fusion.layers, names):
        linear(layer, p[name])
    return model
  if isinstance(model.fusion, (Sum, Tensor)):
    for m, layer in model.fusion.proj.items():
      linear(layer, p[f'proj_{m}'])
    if getattr(model.fusion, 'linear', None) is not None:
      linear(model.fusion.linear, p['linear'])
  elif isinstance(model.fusion, Concat):
    for m in model.names:
      model.fusion.missing[m].data = t(p[f'missing_{m}']['embedding'])
  else:
    f = model.fusion
    f.bottleneck.data = t(p['bottleneck'])
    for m in f.names:
      linear(f.proj[m], p[f'proj_{m}'])
      norm(f.norms[m], p[f'norm_{m}'])
    for name, blk in f.blocks.items():
      b = p[name]
      norm(blk.ln1, b['LayerNorm_0'])
      norm(blk.ln2, b['LayerNorm_1'])
      att = b['MultiHeadDotProductAttention_0']
      for layer, key in ((blk.q, 'query'), (blk.k, 'key'), (blk.v, 'value'),
                         (blk.o, 'out')):
        linear(layer, att[key])
      linear(blk.fc1, b['MlpBlock_0']['Dense_0'])
      linear(blk.fc2, b['MlpBlock_0']['Dense_1'])
  for i, layer in enumerate(model.head.layers):
    linear(layer, params['head'][f'Dense_{i}'])
  return model
