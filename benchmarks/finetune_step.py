r"""A fine-tuning train step of a pretrained encoder: mmfusion against PyTorch.

  python -m benchmarks.finetune_step [--encoder=minilm|efficientnet] [--timed_steps=10]

MiniLM-L6 (batch 32, 32 tokens) or EfficientNet-Lite0 (batch 32, 224x224),
each loaded from the weights its pip package ships, under a mean-pooled
Dense(10) head with AdamW and softmax cross-entropy: the jitted JAX step
(full fine-tuning, and the encoder frozen) against the same step in PyTorch
eager (`transformers`' BertModel on the same files; the `.pth` in
`benchmarks/torch_efficientnet.py`). Prints a Markdown table of median step
times on this machine's cores.
"""

import statistics
import time

from absl import app, flags
import jax
import numpy as np
import optax

from mmfusion.encoders import bert as bert_lib
from mmfusion.encoders import efficientnet as efficientnet_lib
from mmfusion.nn import kernels
from mmfusion.pretrained import bert, efficientnet

_ENCODER = flags.DEFINE_enum('encoder', 'minilm', ['minilm', 'efficientnet'],
                             'Which pretrained encoder to fine-tune.')
_STEPS = flags.DEFINE_integer('timed_steps', 10, 'Timed steps per side.')
B, L, C = 32, 32, 10  # batch, tokens, classes


def _inputs(name):
  rng = np.random.default_rng(0)
  labels = rng.integers(0, C, B)
  if name == 'minilm':
    return rng.integers(1000, 30000, (B, L)).astype(np.int32), labels
  return rng.uniform(size=(B, 224, 224, 3)).astype(np.float32), labels


def _jax_step(name, x, labels, frozen: bool):
  """(seconds per step) of the jitted step; the encoder frozen or not."""
  if name == 'minilm':
    module = bert_lib.Bert(384, kernels=kernels.resolve('auto'))
    load = lambda t: bert.load('all-MiniLM-L6-v2', t)
  else:
    module = efficientnet_lib.EfficientNetLite(
        1280, kernels=kernels.resolve('auto'))
    load = lambda t: efficientnet.load('efficientnet-lite0', t)
  encoder = load(jax.eval_shape(module.init, jax.random.key(0), x)['params'])
  head = {'kernel': np.zeros((module.features, C), np.float32),
          'bias': np.zeros(C, np.float32)}
  params = {'encoder': encoder, 'head': head}
  tx = optax.adamw(1e-4)
  if frozen:
    tx = optax.multi_transform(
        {'train': tx, 'frozen': optax.set_to_zero()},
        {'encoder': jax.tree.map(lambda _: 'frozen', encoder),
         'head': jax.tree.map(lambda _: 'train', head)})

  def loss(p):
    enc = jax.lax.stop_gradient(p['encoder']) if frozen else p['encoder']
    tokens, mask = module.apply({'params': enc}, x)
    pooled = (tokens * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
    logits = pooled @ p['head']['kernel'] + p['head']['bias']
    return optax.softmax_cross_entropy_with_integer_labels(
        logits, labels).mean()

  @jax.jit
  def step(p, s):
    g = jax.grad(loss)(p)
    u, s = tx.update(g, s, p)
    return optax.apply_updates(p, u), s

  state = (params, tx.init(params))
  return _median(lambda: jax.block_until_ready(step(*state)))


def _torch_step(name, x, labels):
  """(seconds per step) of the PyTorch eager step, full fine-tuning."""
  import torch  # pylint: disable=g-import-not-at-top
  if name == 'minilm':
    import transformers  # pylint: disable=g-import-not-at-top
    net = transformers.BertModel.from_pretrained(
        str(bert.folder('all-MiniLM-L6-v2')), add_pooling_layer=False)
    inputs = torch.from_numpy(x).long()
    features = lambda: net(input_ids=inputs).last_hidden_state.mean(1)
    width = 384
  else:
    from benchmarks import torch_efficientnet  # pylint: disable=g-import-not-at-top
    net = torch_efficientnet.from_checkpoint(
        efficientnet.path('efficientnet-lite0'))
    images = torch_efficientnet.normalise(torch.from_numpy(x))
    features = lambda: net.pooled(images)
    width = 1280
  head = torch.nn.Linear(width, C)
  net.train()
  opt = torch.optim.AdamW([*net.parameters(), *head.parameters()], lr=1e-4)
  target = torch.from_numpy(labels)

  def step():
    opt.zero_grad()
    torch.nn.functional.cross_entropy(head(features()), target).backward()
    opt.step()

  return _median(step)


def _median(step) -> float:
  step()  # compile / warm up
  times = []
  for _ in range(_STEPS.value):
    start = time.perf_counter()
    step()
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def main(argv):
  del argv
  name = _ENCODER.value
  x, labels = _inputs(name)
  full = _jax_step(name, x, labels, frozen=False)
  frozen = _jax_step(name, x, labels, frozen=True)
  torch_full = _torch_step(name, x, labels)
  print(f'| {name} | mmfusion full | mmfusion frozen | PyTorch eager full | '
        'full / PyTorch |')
  print('|---|---|---|---|---|')
  print(f'| batch {B} | {1e3 * full:.0f} ms | {1e3 * frozen:.0f} ms | '
        f'{1e3 * torch_full:.0f} ms | {full / torch_full:.2f}x |')


if __name__ == '__main__':
  app.run(main)
