"""The benchmarked mmfusion models in PyTorch, built from the same config.

`build(model_config, shapes, num_classes)` mirrors `mmfusion.models.
MultimodalModel` layer for layer for the encoders and fusion methods that the
benchmark compares (`PORTED`): same widths, kernel sizes, paddings, pooling,
GroupNorm/LayerNorm epsilons, GELU (tanh form) and top-level parts
(`encoder_<m>`, `fusion`, `head`), so parameter counts match per part; the one
exception is `nn.GRU`, which keeps both bias vectors of the reset and update
gates (2 x features more than flax's GRUCell, same FLOPs). Written the way a
PyTorch user would write them: NCHW convs, `nn.GRU`, `scaled_dot_product_
attention`. Fusion parameters are named after their flax counterparts
(`proj[m]` is `proj_<m>`, `blocks` keys are flax names) for `load_flax_params`.
Legend: B batch, T tokens, S key tokens, D width, E modality width, C channels,
L text length, M modalities, R rank, Z context width.
"""

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

PORTED = {'encoders': ('mlp', 'cnn', 'audio_cnn', 'gru'),
          'fusions': ('early', 'concat', 'sum', 'gated', 'nlgate', 'tensor',
                      'low_rank_tensor', 'multiplicative', 'film',
                      'cross_attention', 'bottleneck', 'perceiver',
                      'late_logits', 'late_probs', 'late_poe',
                      'late_weighted', 'late_stacking')}


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


def pool(cleaned):
  """mmfusion.fusion.common.pool: {m: masked mean of its tokens [B, E_m]}."""
  return {m: masked_mean(x, valid) for m, (x, valid) in cleaned.items()}


def impute(x, present_B, emb):
  """mmfusion.fusion.common.Missing: absent examples of x become `emb`."""
  return torch.where(present_B.reshape(-1, *(1,) * (x.ndim - 1)), x, emb)


def masked_softmax(logits, include, dim):
  """mmfusion.fusion.common.masked_softmax: all-excluded slices give zeros."""
  logits = logits.masked_fill(~include, torch.finfo(logits.dtype).min)
  return torch.where(include, torch.softmax(logits, dim), 0.0)


def with_one(z_BxE):
  return torch.cat([torch.ones_like(z_BxE[:, :1]), z_BxE], -1)


def _width(features, widths: dict) -> int:
  return int(features) if features is not None else max(widths.values())


def _modality(method: str, field: str, value, names) -> str:
  if value is not None and value not in names:
    raise ValueError(f'fusion {method!r}: {field}={value!r} is not one of the '
                     f'modalities {", ".join(names)}.')
  return value or names[0]


class Early(nn.Module):
  """mmfusion.fusion.early.Early: inputs and presence flags concatenated."""

  def __init__(self, shapes: dict, indicators=True, layout='auto'):
    super().__init__()
    if layout not in ('aligned', 'flat', 'auto'):
      raise NotImplementedError(
          f"no PyTorch port of early fusion with layout={layout!r}; ported: "
          "'aligned', 'flat', 'auto'.")
    shapes = {m: tuple(shapes[m]) for m in sorted(shapes)}
    lead = {s[:-1] for s in shapes.values()}
    aligned = len(lead) == 1 and all(shapes.values())
    if layout == 'aligned' and not aligned:
      raise ValueError(f"early fusion with layout='aligned' needs inputs that "
                       f'agree on every axis but the last, got {shapes}.')
    self.flat, self.indicators = layout == 'flat' or not aligned, indicators
    widths = [int(np.prod(s)) if self.flat else s[-1] for s in shapes.values()]
    self.out_shape = ((() if self.flat else lead.pop())
                      + (sum(widths) + indicators * len(shapes),))

  def forward(self, inputs, present):
    parts, flags = [], []
    for m in sorted(inputs):
      x = inputs[m].float()
      if self.flat:
        x_BxF = x.reshape(x.shape[0], -1)
        x = (x_BxF - x_BxF.mean(-1, keepdim=True)) * torch.rsqrt(
            x_BxF.var(-1, correction=0, keepdim=True) + 1e-6)
      keep = present[m].reshape(-1, *(1,) * (x.ndim - 1))
      parts.append(torch.where(keep, x, 0.0))
      flags.append(keep.expand(*x.shape[:-1], 1).float())
    return torch.cat(parts + (flags if self.indicators else []), -1)


class Concat(nn.Module):
  """mmfusion.fusion.simple.Concat with features=None."""

  def __init__(self, widths: dict):
    super().__init__()
    self.missing = nn.ParameterDict(
        {m: nn.Parameter(torch.zeros(d)) for m, d in widths.items()})
    self.d = sum(widths.values())

  def forward(self, tokens, masks, present):
    pooled = pool(clean_tokens(tokens, masks, present))
    return torch.cat([impute(z, present[m], self.missing[m])
                      for m, z in pooled.items()], -1)


class Sum(nn.Module):
  """mmfusion.fusion.simple.Sum: per-modality Linear, summed over present."""

  def __init__(self, widths: dict, features=None):
    super().__init__()
    self.d = _width(features, widths)
    self.proj = nn.ModuleDict({m: nn.Linear(w, self.d) for m, w in widths.items()})

  def forward(self, tokens, masks, present):
    total = 0.0
    for m, z in pool(clean_tokens(tokens, masks, present)).items():
      total = total + torch.where(present[m][:, None], self.proj[m](z), 0.0)
    return total


class Gated(nn.Module):
  """mmfusion.fusion.simple.Gated (GMU): softmax_m(gate) * tanh(W_m z_m)."""

  def __init__(self, widths: dict, features=None):
    super().__init__()
    self.d = d = _width(features, widths)
    self.proj = nn.ModuleDict({m: nn.Linear(w, d) for m, w in widths.items()})
    self.missing = nn.ParameterDict(
        {m: nn.Parameter(torch.zeros(w)) for m, w in widths.items()})
    self.gate = nn.Linear(sum(widths.values()), len(widths) * d)

  def forward(self, tokens, masks, present):
    pooled = pool(clean_tokens(tokens, masks, present))
    p_BxM = torch.stack([present[m] for m in pooled], 1)
    h_BxMxD = torch.stack([torch.tanh(self.proj[m](z))
                           for m, z in pooled.items()], 1)
    z_BxZ = torch.cat([impute(z, present[m], self.missing[m])
                       for m, z in pooled.items()], -1)
    g_BxMxD = masked_softmax(self.gate(z_BxZ).view(h_BxMxD.shape),
                             p_BxM[..., None], 1)
    return (g_BxMxD * h_BxMxD).sum(1)


class NLGate(nn.Module):
  """mmfusion.fusion.nlgate.NLGate: the query modality's tokens attend (one
  head, a residual non-local block) the other modalities' tokens."""

  def __init__(self, widths: dict, features=None, query=None):
    super().__init__()
    names = sorted(widths)
    self.target = _modality('nlgate', 'query', query, names)
    self.d = d = _width(features, widths)
    self.proj = nn.ModuleDict({m: nn.Linear(widths[m], d) for m in names})
    self.missing = nn.ParameterDict({self.target: nn.Parameter(torch.zeros(d))})
    self.query, self.key, self.value, self.out = (nn.Linear(d, d) for _ in range(4))

  def forward(self, tokens, masks, present):
    cleaned = clean_tokens(tokens, masks, present)
    x_BxTxE, q_valid_BxT = cleaned.pop(self.target)
    p_B = present[self.target]
    x_BxTxD = impute(self.proj[self.target](x_BxTxE), p_B,
                     self.missing[self.target])
    kv_BxSxD = torch.cat([self.proj[m](x) for m, (x, _) in cleaned.items()], 1)
    kv_valid_BxS = torch.cat([v for _, v in cleaned.values()], 1)
    logits_BxTxS = self.query(x_BxTxD) @ self.key(kv_BxSxD).transpose(1, 2)
    att_BxTxS = masked_softmax(logits_BxTxS / math.sqrt(self.d),
                               kv_valid_BxS[:, None, :], -1)
    y_BxTxD = self.out(att_BxTxS @ self.value(kv_BxSxD))
    y_BxTxD = x_BxTxD + unless_no_keys(kv_valid_BxS, y_BxTxD, 0.0)
    return masked_mean(y_BxTxD, q_valid_BxT | ~p_B[:, None])


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
    for m, z in pool(clean_tokens(tokens, masks, present)).items():
      if m in self.proj:
        z = self.proj[m](z)
      z1 = with_one(torch.where(present[m][:, None], z, 0.0))
      t = z1 if t is None else (t[:, :, None] * z1[:, None, :]).reshape(z1.shape[0], -1)
    return t if self.linear is None else self.linear(t)


class LowRankTensor(nn.Module):
  """mmfusion.fusion.tensor.LowRankTensor (LMF): sum_r w_r prod_m [1; z_m] W_m^r."""

  def __init__(self, widths: dict, features=None, rank=4):
    super().__init__()
    self.d = d = _width(features, widths)
    self.factor = nn.ParameterDict({  # xavier normal over [E_m + 1, D]
        m: nn.Parameter(math.sqrt(2 / (w + 1 + d)) * torch.randn(rank, w + 1, d))
        for m, w in widths.items()})
    self.rank_weights = nn.Parameter(torch.randn(1, rank))
    self.bias = nn.Parameter(torch.zeros(d))

  def forward(self, tokens, masks, present):
    prod_BxRxD = 1.0
    for m, z in pool(clean_tokens(tokens, masks, present)).items():
      z1_BxE = with_one(torch.where(present[m][:, None], z, 0.0))
      prod_BxRxD = prod_BxRxD * torch.einsum('be,red->brd', z1_BxE, self.factor[m])
    return torch.einsum('r,brd->bd', self.rank_weights[0], prod_BxRxD) + self.bias


class Multiplicative(nn.Module):
  """mmfusion.fusion.tensor.Multiplicative (MI layer): f(x, z) = W'(z) x + b'(z),
  x the target's pooled vector, z the others' concatenated."""

  def __init__(self, widths: dict, features=None, form='matrix', target=None,
               proj_dim=None):
    super().__init__()
    if form not in ('matrix', 'vector', 'scalar'):
      raise NotImplementedError(
          f"no PyTorch port of multiplicative fusion with form={form!r}; "
          "ported: 'matrix', 'vector', 'scalar'.")
    names = sorted(widths)
    self.target = _modality('multiplicative', 'target', target, names)
    self.form = form
    self.d = d = _width(features, widths)
    sizes = {m: proj_dim or widths[m] for m in names}
    self.proj = nn.ModuleDict({m: nn.Linear(widths[m], proj_dim) for m in names}
                              if proj_dim else {})
    self.missing = nn.ParameterDict(
        {m: nn.Parameter(torch.zeros(sizes[m])) for m in names})
    e, z = sizes[self.target], sum(sizes[m] for m in names if m != self.target)
    self.in_proj = nn.Linear(e, d) if form != 'matrix' and e != d else None
    e = d if self.in_proj is not None else e
    self.context_bias = nn.Linear(z, d)
    if form == 'matrix':
      self.w = nn.Parameter(torch.randn(z, e, d) / math.sqrt(z * e))
      self.v = nn.Linear(e, d, bias=False)
    else:
      self.gate = nn.Linear(z, d if form == 'vector' else 1)
      nn.init.ones_(self.gate.bias)

  def forward(self, tokens, masks, present):
    vecs = {}
    for m, z in pool(clean_tokens(tokens, masks, present)).items():
      z = self.proj[m](z) if m in self.proj else z
      vecs[m] = impute(z, present[m], self.missing[m])
    x_BxE = vecs.pop(self.target)
    z_BxZ = torch.cat(list(vecs.values()), -1)
    if self.in_proj is not None:
      x_BxE = self.in_proj(x_BxE)
    bias_BxD = self.context_bias(z_BxZ)
    if self.form == 'matrix':
      return (torch.einsum('bz,zed,be->bd', z_BxZ, self.w, x_BxE)
              + self.v(x_BxE) + bias_BxD)
    return self.gate(z_BxZ) * x_BxE + bias_BxD


class FiLM(nn.Module):
  """mmfusion.fusion.film.FiLM: the others' pooled vectors give (gamma, beta)
  for a residual block x + relu(gamma * Wx + beta) over the target's tokens."""

  def __init__(self, widths: dict, features=None, target=None):
    super().__init__()
    names = sorted(widths)
    self.target = _modality('film', 'target', target, names)
    e = widths[self.target]
    self.d = d = int(features) if features is not None else e
    context = {m: w for m, w in widths.items() if m != self.target}
    self.missing = nn.ParameterDict({m: nn.Parameter(torch.zeros(w)) for m, w
                                     in {**context, self.target: d}.items()})
    self.proj = nn.Linear(e, d) if features is not None else None
    self.generator = nn.Linear(sum(context.values()), 2 * d)
    self.linear = nn.Linear(d, d)

  def forward(self, tokens, masks, present):
    cleaned = clean_tokens(tokens, masks, present)
    c_BxC = torch.cat([impute(z, present[m], self.missing[m])
                       for m, z in pool(cleaned).items() if m != self.target], -1)
    x_BxTxD, valid_BxT = cleaned[self.target]
    if self.proj is not None:
      x_BxTxD = self.proj(x_BxTxD)
    p_B = present[self.target]
    x_BxTxD = impute(x_BxTxD, p_B, self.missing[self.target])
    dgamma_BxD, beta_BxD = self.generator(c_BxC).chunk(2, -1)
    h_BxTxD = F.relu((1 + dgamma_BxD[:, None]) * self.linear(x_BxTxD)
                     + beta_BxD[:, None])
    return masked_mean(x_BxTxD + h_BxTxD, valid_BxT | ~p_B[:, None])


def sincos_posemb(t, d):
  pos = torch.arange(t, dtype=torch.float32)[:, None]
  freq = torch.exp(-math.log(10_000.0) * torch.arange(0, d, 2) / d)
  emb = torch.zeros(t, d)
  emb[:, 0::2] = torch.sin(pos * freq)
  emb[:, 1::2] = torch.cos(pos * freq[: d // 2])
  return emb


def embed_tokens(cleaned, proj, d):
  """mmfusion.fusion.common.embed_tokens: {m: (proj[m](x) + positions, valid)}."""
  return {m: (proj[m](x) + sincos_posemb(x.shape[1], d), valid)
          for m, (x, valid) in cleaned.items()}


def unless_no_keys(kv_valid_BxS, new, old):
  """mmfusion.fusion.attention.unless_no_keys: `old` where no key is real."""
  return torch.where(kv_valid_BxS.any(1)[:, None, None], new, old)


class Block(nn.Module):
  """mmfusion.layers.Block (pre-LN attention + GELU MLP); `cross`: the queries
  x attend a layer-normed key/value stream kv."""

  def __init__(self, d, num_heads, mlp_dim, dropout=0.0, cross=False):
    super().__init__()
    if dropout:
      raise NotImplementedError(
          f'no PyTorch port of Transformer blocks with dropout={dropout}; '
          'only dropout=0.0 is ported.')
    self.ln1, self.ln2 = nn.LayerNorm(d, eps=1e-6), nn.LayerNorm(d, eps=1e-6)
    self.ln_kv = nn.LayerNorm(d, eps=1e-6) if cross else None
    self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))
    self.fc1, self.fc2 = nn.Linear(d, mlp_dim), nn.Linear(mlp_dim, d)
    self.heads = num_heads

  def forward(self, x_BxTxD, kv_mask_BxS=None, kv_BxSxD=None):
    b, t, d = x_BxTxD.shape
    y = self.ln1(x_BxTxD)
    kv = y if kv_BxSxD is None else self.ln_kv(kv_BxSxD)
    split = lambda z: z.view(b, z.shape[1], self.heads, -1).transpose(1, 2)
    # Only keys are masked. flax also masks padded queries and gives a row with
    # no real key a uniform average (zeros here): callers drop those rows.
    mask = None if kv_mask_BxS is None else kv_mask_BxS[:, None, None, :]
    att = F.scaled_dot_product_attention(
        split(self.q(y)), split(self.k(kv)), split(self.v(kv)),
        attn_mask=mask)  # [B, H, T, D/H]
    x_BxTxD = x_BxTxD + self.o(att.transpose(1, 2).reshape(b, t, d))
    y = self.fc2(F.gelu(self.fc1(self.ln2(x_BxTxD)), approximate='tanh'))
    return x_BxTxD + y


def present_mean(x_BxMx_, p_BxM):
  keep = p_BxM.reshape(p_BxM.shape + (1,) * (x_BxMx_.ndim - 2))
  total = torch.where(keep, x_BxMx_, 0.0).sum(1)
  n = p_BxM.sum(1).to(total.dtype).clamp_min(1.0)
  return total / n.reshape(n.shape + (1,) * (total.ndim - 1))


class CrossAttention(nn.Module):
  """mmfusion.fusion.attention.CrossAttention (MulT): per target, the others'
  cross-attention streams, merged, a self-attention block, pooled."""

  def __init__(self, widths: dict, features=None, num_layers=1, num_heads=4,
               mlp_dim=None, dropout=0.0):
    super().__init__()
    self.names = names = sorted(widths)
    self.d = d = _width(features, widths)
    block = lambda cross=False: Block(d, num_heads, mlp_dim or 4 * d, dropout,
                                      cross)
    self.proj = nn.ModuleDict({m: nn.Linear(widths[m], d) for m in names})
    self.missing = nn.ParameterDict({m: nn.Parameter(torch.zeros(d)) for m in names})
    self.blocks = nn.ModuleDict()
    for tgt in names:
      for src in (m for m in names if m != tgt):
        for i in range(num_layers):
          self.blocks[f'{src}_to_{tgt}_{i}'] = block(cross=True)
      self.blocks[f'self_{tgt}'] = block()
    self.merge = nn.ModuleDict({m: nn.Linear((len(names) - 1) * d, d)
                                for m in names} if len(names) > 2 else {})
    self.norm = nn.ModuleDict({m: nn.LayerNorm(d, eps=1e-6) for m in names})
    self.out = nn.Linear(len(names) * d, d)
    self.num_layers = num_layers

  def forward(self, tokens, masks, present):
    embedded = embed_tokens(clean_tokens(tokens, masks, present), self.proj, self.d)
    pooled = []
    for tgt in self.names:
      q_BxTxD, q_valid_BxT = embedded[tgt]
      q_BxTxD = impute(q_BxTxD, present[tgt], self.missing[tgt])
      q_valid_BxT = q_valid_BxT | ~present[tgt][:, None]
      streams = []
      for src in (m for m in self.names if m != tgt):
        kv_BxSxD, kv_valid_BxS = embedded[src]
        h_BxTxD = q_BxTxD
        for i in range(self.num_layers):
          new = self.blocks[f'{src}_to_{tgt}_{i}'](h_BxTxD, kv_valid_BxS, kv_BxSxD)
          h_BxTxD = unless_no_keys(kv_valid_BxS, new, h_BxTxD)
        streams.append(h_BxTxD)
      h_BxTxD = torch.cat(streams, -1)  # [B, T, (M - 1) D]
      if tgt in self.merge:
        h_BxTxD = self.merge[tgt](h_BxTxD)
      h_BxTxD = self.norm[tgt](self.blocks[f'self_{tgt}'](h_BxTxD, q_valid_BxT))
      pooled.append(masked_mean(h_BxTxD, q_valid_BxT))
    return self.out(torch.cat(pooled, -1))


class Bottleneck(nn.Module):
  """mmfusion.fusion.attention.Bottleneck (MBT, Nagrani et al. 2021)."""

  def __init__(self, widths: dict, features=None, num_layers=2,
               fusion_layer=0, n_bottlenecks=4, num_heads=4, mlp_dim=None,
               dropout=0.0):
    super().__init__()
    d = _width(features, widths)
    self.names = sorted(widths)
    self.proj = nn.ModuleDict({m: nn.Linear(widths[m], d) for m in self.names})
    self.blocks = nn.ModuleDict({
        f'{m}_{i}': Block(d, num_heads, mlp_dim or 4 * d, dropout)
        for i in range(num_layers) for m in self.names})
    self.norm = nn.ModuleDict({m: nn.LayerNorm(d, eps=1e-6) for m in self.names})
    self.bottleneck = nn.Parameter(0.02 * torch.randn(n_bottlenecks, d))
    self.num_layers, self.fusion_layer, self.d = num_layers, fusion_layer, d

  def forward(self, tokens, masks, present):
    embedded = embed_tokens(clean_tokens(tokens, masks, present), self.proj, self.d)
    x = {m: xv[0] for m, xv in embedded.items()}
    valid = {m: xv[1] for m, xv in embedded.items()}
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
    pooled = [masked_mean(self.norm[m](x[m]), valid[m]) for m in self.names]
    return present_mean(torch.stack(pooled, 1), p_BxM)


class Perceiver(nn.Module):
  """mmfusion.fusion.attention.Perceiver: learned latents cross-attend all
  modalities' tokens, then latent self-attention blocks, mean-pooled."""

  def __init__(self, widths: dict, features=None, num_latents=8, num_layers=1,
               num_heads=4, mlp_dim=None, dropout=0.0):
    super().__init__()
    self.d = d = _width(features, widths)
    block = lambda cross=False: Block(d, num_heads, mlp_dim or 4 * d, dropout,
                                      cross)
    self.proj = nn.ModuleDict({m: nn.Linear(w, d) for m, w in widths.items()})
    self.modality = nn.ParameterDict(
        {m: nn.Parameter(0.02 * torch.randn(d)) for m in widths})
    self.latents = nn.Parameter(0.02 * torch.randn(num_latents, d))
    self.blocks = nn.ModuleDict({'cross': block(cross=True), **{
        f'latent_{i}': block() for i in range(num_layers)}})
    self.norm = nn.LayerNorm(d, eps=1e-6)
    self.num_layers = num_layers

  def forward(self, tokens, masks, present):
    embedded = embed_tokens(clean_tokens(tokens, masks, present), self.proj, self.d)
    kv_BxSxD = torch.cat([x + self.modality[m] for m, (x, _) in embedded.items()], 1)
    kv_valid_BxS = torch.cat([v for _, v in embedded.values()], 1)
    lat_BxNxD = self.latents.expand(kv_BxSxD.shape[0], -1, -1)
    h_BxNxD = unless_no_keys(
        kv_valid_BxS, self.blocks['cross'](lat_BxNxD, kv_valid_BxS, kv_BxSxD),
        lat_BxNxD)
    for i in range(self.num_layers):
      h_BxNxD = self.blocks[f'latent_{i}'](h_BxNxD)
    return self.norm(h_BxNxD).mean(1)


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
      w_MxB = masked_softmax(self.scores[:, None].expand(p_MxB.shape), p_MxB, 0)
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


_ATTENTION = dict(features=None, num_heads=4, mlp_dim=None, dropout=0.0)
# Intermediate fusion name -> (port, its options with mmfusion's defaults).
_FUSIONS = {
    'concat': (Concat, {}),
    'sum': (Sum, dict(features=None)),
    'gated': (Gated, dict(features=None)),
    'nlgate': (NLGate, dict(features=None, query=None)),
    'tensor': (Tensor, dict(features=None, proj_dim=8)),
    'low_rank_tensor': (LowRankTensor, dict(features=None, rank=4)),
    'multiplicative': (Multiplicative, dict(features=None, form='matrix',
                                            target=None, proj_dim=None)),
    'film': (FiLM, dict(features=None, target=None)),
    'cross_attention': (CrossAttention, dict(_ATTENTION, num_layers=1)),
    'bottleneck': (Bottleneck, dict(_ATTENTION, num_layers=2, fusion_layer=0,
                                    n_bottlenecks=4)),
    'perceiver': (Perceiver, dict(_ATTENTION, num_latents=8, num_layers=1)),
}


def _fusion(name: str, kwargs: dict, widths: dict):
  """The port of intermediate fusion `name`; `.d` is its output width."""
  if name not in _FUSIONS:
    raise NotImplementedError(f'no PyTorch port of fusion {name!r}')
  port, defaults = _FUSIONS[name]
  return port(widths, **_opts(kwargs, **defaults))


class MultimodalModel(nn.Module):
  """Encoders -> fusion -> head, as mmfusion.models.MultimodalModel."""

  def __init__(self, model_config, shapes: dict, num_classes: int):
    super().__init__()
    if model_config.get('dtype', 'float32') != 'float32':
      raise NotImplementedError('the PyTorch ports are float32 only')
    encoders = {m: dict(c) for m, c in model_config['encoders'].items()}
    self.names = sorted(encoders)
    fusion = model_config['fusion']
    kwargs = dict(model_config.get('fusion_kwargs') or {})
    hidden = tuple(model_config.get('head_hidden') or ())
    self.stage = ('early' if fusion == 'early' else
                  'late' if fusion.startswith('late_') else 'intermediate')
    if self.stage == 'early':
      self.fusion = Early({m: shapes[m] for m in self.names},
                          **_opts(kwargs, indicators=True, layout='auto'))
      shared = dict(model_config['early_encoder'])
      self.encoder_early = _encoder(shared, self.fusion.out_shape)
      self.head = Head(int(shared['features']), num_classes, hidden)
      return
    for m in self.names:
      self.add_module(f'encoder_{m}', _encoder(encoders[m], shapes[m]))
    widths = {m: int(encoders[m]['features']) for m in self.names}
    if self.stage == 'late':
      options = {'late_stacking': {'hidden', 'inputs'}}.get(fusion, set())
      if fusion not in PORTED['fusions'] or set(kwargs) - options:
        raise NotImplementedError(f'no PyTorch port of fusion {fusion!r} {kwargs}')
      for m in self.names:
        self.add_module(f'head_{m}', Head(widths[m], num_classes, hidden))
      self.fusion = Late(fusion, self.names, num_classes, **kwargs)
      return
    self.fusion = _fusion(fusion, kwargs, widths)
    self.head = Head(self.fusion.d, num_classes, hidden)

  def forward(self, batch):
    present = {m: batch[f'present/{m}'] for m in self.names}
    inputs = {m: torch.where(present[m].reshape((-1,) + (1,) * (batch[m].ndim - 1)),
                             batch[m], torch.zeros_like(batch[m]))
              for m in self.names}
    if self.stage == 'early':
      tokens, mask = self.encoder_early(self.fusion(inputs, present))
      return self.head(masked_mean(tokens, mask))
    tokens, masks = {}, {}
    for m in self.names:
      tokens[m], masks[m] = getattr(self, f'encoder_{m}')(inputs[m])
    if self.stage == 'late':
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
    if layer.bias is not None:
      layer.bias.data = t(p['bias']).reshape(-1)

  def norm(layer, p):
    layer.weight.data, layer.bias.data = t(p['scale']), t(p['bias'])

  def conv2d(layer, p):
    layer.weight.data = t(p['kernel']).permute(3, 2, 0, 1).contiguous()  # OIHW
    layer.bias.data = t(p['bias'])

  def block(blk, p):
    lns = [blk.ln1, *([blk.ln_kv] if blk.ln_kv is not None else []), blk.ln2]
    for i, layer in enumerate(lns):
      norm(layer, p[f'LayerNorm_{i}'])
    att = p['MultiHeadDotProductAttention_0']
    for layer, key in ((blk.q, 'query'), (blk.k, 'key'), (blk.v, 'value'),
                       (blk.o, 'out')):
      linear(layer, att[key])
    linear(blk.fc1, p['MlpBlock_0']['Dense_0'])
    linear(blk.fc2, p['MlpBlock_0']['Dense_1'])

  def part(module, p):
    """A fusion part named as in flax: Linear, LayerNorm, Block, Parameter."""
    if isinstance(module, nn.Linear):
      linear(module, p)
    elif isinstance(module, nn.LayerNorm):
      norm(module, p)
    elif isinstance(module, Block):
      block(module, p)
    else:  # a parameter; `missing` ones are flax Missing modules
      module.data = t(p.get('embedding', p) if isinstance(p, dict) else p
                      ).reshape(module.shape)

  def fusion(f, p):
    """`blocks` keys are flax names; another dict's key k of attribute a is
    flax's `a_k`; any other attribute a is flax's `a`."""
    for name, child in [*f.named_children(), *f.named_parameters(recurse=False)]:
      if isinstance(child, (nn.ModuleDict, nn.ParameterDict)):
        for k, c in child.items():
          part(c, p[k if name == 'blocks' else f'{name}_{k}'])
      else:
        part(child, p[name])

  if model.stage == 'early':
    encoders = {'early': model.encoder_early}
  else:
    encoders = {m: getattr(model, f'encoder_{m}') for m in model.names}
  for m, enc in encoders.items():
    p = params[f'encoder_{m}']
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
  fusion(model.fusion, p)
  for i, layer in enumerate(model.head.layers):
    linear(layer, params['head'][f'Dense_{i}'])
  return model
