"""`mmfusion.nn.decoder.Decoder` (cross_attention conditioning, learned
positions, tied embedding) in PyTorch eager, its greedy loop with a KV
cache, and the child process `decode_speed` times it in.

Same layers as the flax module: pre-LN blocks of causal self-attention,
cross-attention to the layer-normed memory (skipped for an example whose
memory is all padding), tanh-GELU MLP; LayerNorm epsilon 1e-6; logits from
the embedding scaled by D**-0.5; padding never generated. `load_flax_params`
copies a flax parameter tree in. The cache is preallocated per layer
([B, H, max_length, K]) and a step attends to its first n + 1 slots.

    python -m benchmarks.torch_decoder --inputs=DIR  # what decode_speed runs
"""

import json
import os
import sys
import time

import numpy as np


def _torch():
  import torch  # pylint: disable=g-import-not-at-top
  return torch


def build(sizes: dict):
  """The PyTorch decoder for `sizes` (vocab_size, features, num_layers,
  num_heads, mlp_dim, max_positions, memory_dim)."""
  torch = _torch()
  nn, F = torch.nn, torch.nn.functional
  d, h = sizes['features'], sizes['num_heads']
  k = d // h

  def heads(x_BxTxD):
    b, t, _ = x_BxTxD.shape
    return x_BxTxD.view(b, t, h, k).transpose(1, 2)  # [B, H, T, K]

  def merge(y_BxHxTxK):
    b, _, t, _ = y_BxHxTxK.shape
    return y_BxHxTxK.transpose(1, 2).reshape(b, t, d)

  class Block(nn.Module):
    def __init__(self):
      super().__init__()
      ln = lambda n: nn.LayerNorm(n, eps=1e-6)
      self.self_norm, self.cross_norm, self.mlp_norm = ln(d), ln(d), ln(d)
      self.memory_norm = ln(sizes['memory_dim'])
      self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))
      self.cq, self.co = nn.Linear(d, d), nn.Linear(d, d)
      self.ck = nn.Linear(sizes['memory_dim'], d)
      self.cv = nn.Linear(sizes['memory_dim'], d)
      self.fc1 = nn.Linear(d, sizes['mlp_dim'])
      self.fc2 = nn.Linear(sizes['mlp_dim'], d)

    def memory_kv(self, memory_BxMxE):
      m = self.memory_norm(memory_BxMxE)
      return heads(self.ck(m)), heads(self.cv(m))

    def forward(self, x_BxTxD, cache, n, cross):
      t = x_BxTxD.shape[1]
      y = self.self_norm(x_BxTxD)
      cache['k'][:, :, n:n + t] = heads(self.k(y))
      cache['v'][:, :, n:n + t] = heads(self.v(y))
      y = F.scaled_dot_product_attention(
          heads(self.q(y)), cache['k'][:, :, :n + t], cache['v'][:, :, :n + t],
          is_causal=t > 1)
      x_BxTxD = x_BxTxD + self.o(merge(y))
      mk, mv, mask_Bx1x1xM, has_Bx1x1 = cross
      y = F.scaled_dot_product_attention(
          heads(self.cq(self.cross_norm(x_BxTxD))), mk, mv,
          attn_mask=mask_Bx1x1xM)
      x_BxTxD = x_BxTxD + self.co(merge(y)) * has_Bx1x1
      y = self.fc2(F.gelu(self.fc1(self.mlp_norm(x_BxTxD)),
                          approximate='tanh'))
      return x_BxTxD + y

  class Decoder(nn.Module):
    def __init__(self):
      super().__init__()
      self.embed = nn.Embedding(sizes['vocab_size'], d)
      self.pos = nn.Parameter(torch.zeros(sizes['max_positions'], d))
      self.blocks = nn.ModuleList(Block() for _ in range(sizes['num_layers']))
      self.norm = nn.LayerNorm(d, eps=1e-6)

    def start(self, memory_BxMxE, mask_BxM, max_length):
      """The cache: cross keys/values and empty self-attention slots."""
      b = memory_BxMxE.shape[0]
      has = mask_BxM.any(1).to(memory_BxMxE.dtype)[:, None, None]
      empty = lambda: torch.zeros(b, h, max_length, k)
      return [{'k': empty(), 'v': empty(),
               'cross': (*blk.memory_kv(memory_BxMxE),
                         mask_BxM[:, None, None], has)}
              for blk in self.blocks]

    def forward(self, tokens_BxT, cache, n):
      """Logits [B, T, V] of T tokens written from slot n."""
      t = tokens_BxT.shape[1]
      x = self.embed(tokens_BxT) + self.pos[n:n + t]
      for blk, c in zip(self.blocks, cache):
        x = blk(x, c, n, c['cross'])
      return (self.norm(x) * d ** -0.5) @ self.embed.weight.T

  return Decoder()


def load_flax_params(model, params: dict):
  """Copies a flax `Decoder` parameter tree (numpy leaves) into `model`."""
  torch = _torch()
  t = lambda x: torch.from_numpy(np.ascontiguousarray(x, np.float32))
  def dense(lin, p, heads_in=False):
    kernel = p['kernel']
    kernel = kernel.reshape(-1, kernel.shape[-1]) if heads_in else (
        kernel.reshape(kernel.shape[0], -1))
    lin.weight.copy_(t(kernel.T))
    lin.bias.copy_(t(p['bias'].reshape(-1)))
  def norm(ln, p):
    ln.weight.copy_(t(p['scale']))
    ln.bias.copy_(t(p['bias']))
  with torch.no_grad():
    model.embed.weight.copy_(t(params['embed']['embedding']))
    model.pos.copy_(t(params['pos_embedding']))
    norm(model.norm, params['norm'])
    for i, blk in enumerate(model.blocks):
      p = params[f'blocks_{i}']
      for ln, name in ((blk.self_norm, 'self_norm'),
                       (blk.cross_norm, 'cross_norm'),
                       (blk.mlp_norm, 'mlp_norm'),
                       (blk.memory_norm, 'memory_norm')):
        norm(ln, p[name])
      sa, ca = p['self_attention'], p['cross_attention']
      for lin, q in ((blk.q, sa['query']), (blk.k, sa['key']),
                     (blk.v, sa['value']), (blk.cq, ca['query']),
                     (blk.ck, ca['key']), (blk.cv, ca['value'])):
        dense(lin, q)
      dense(blk.o, sa['out'], heads_in=True)
      dense(blk.co, ca['out'], heads_in=True)
      dense(blk.fc1, p['mlp']['Dense_0'])
      dense(blk.fc2, p['mlp']['Dense_1'])
  return model


def greedy(model, memory_BxMxE, mask_BxM, prompt_Bx1, max_length: int,
           eos_id: int, pad_id: int = 0):
  """Greedy decoding as `mmfusion.nn.decoding.greedy` does it (BOS-only
  prompts): tokens [B, max_length], and the first step's logits."""
  torch = _torch()
  with torch.inference_mode():
    cache = model.start(memory_BxMxE, mask_BxM, max_length)
    out = torch.full((prompt_Bx1.shape[0], max_length), pad_id,
                     dtype=torch.long)
    out[:, :1] = prompt_Bx1
    done = torch.zeros(prompt_Bx1.shape[0], dtype=torch.bool)
    tok, first = prompt_Bx1, None
    for n in range(max_length - 1):
      logits = model(tok, cache, n)[:, -1]
      logits[:, pad_id] = -float('inf')
      first = logits.clone() if first is None else first
      nxt = torch.where(done, pad_id, logits.argmax(-1))
      out[:, n + 1] = nxt
      done = done | (nxt == eos_id)
      if bool(done.all()):
        break
      tok = nxt[:, None]
    return out, first


def _child(inputs: str):
  """Loads decode_speed's weights and batch, then answers 'time N' lines
  with the greedy loop's times (JSON), until stdin closes."""
  torch = _torch()
  torch.set_flush_denormal(True)  # as XLA does
  with open(os.path.join(inputs, 'sizes.json')) as f:
    sizes = json.load(f)
  if sizes.get('torch_threads'):
    torch.set_num_threads(sizes['torch_threads'])
  arrays = dict(np.load(os.path.join(inputs, 'arrays.npz')))
  params = {}
  for key, value in arrays.items():
    if key.startswith('params/'):
      node = params
      *path, leaf = key.split('/')[1:]
      for name in path:
        node = node.setdefault(name, {})
      node[leaf] = value
  model = load_flax_params(build(sizes), params).eval()
  memory = torch.from_numpy(arrays['memory'])
  mask = torch.from_numpy(arrays['mask'])
  prompt = torch.from_numpy(arrays['prompt'].astype(np.int64))
  run = lambda: greedy(model, memory, mask, prompt, sizes['max_length'],
                       sizes['eos_id'])
  tokens, first = run()
  print(json.dumps({'tokens': tokens.tolist(), 'first_logits':
                    first.tolist(), 'threads': torch.get_num_threads(),
                    'version': torch.__version__}), flush=True)
  for line in sys.stdin:
    times = []
    for _ in range(int(line.split()[1])):
      t0 = time.perf_counter()
      run()
      times.append(time.perf_counter() - t0)
    print(json.dumps({'seconds': times}), flush=True)


if __name__ == '__main__':
  _child(sys.argv[1].split('=', 1)[1])
