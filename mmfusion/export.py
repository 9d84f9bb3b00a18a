"""A trained model as a portable `jax.export` artifact (serialized StableHLO).

  python -m mmfusion.export --workdir=W --out=DIR [--checkpoint=best] \\
      [--member=K] [--platforms=cpu,cuda,tpu]

writes a new directory DIR with
  model.jax_export  the inference function of `mmfusion.inference` with its
                    parameters embedded, for any batch size `b`
  signature.json    input and output names, shapes (with 'b') and dtypes,
                    class names, preprocessing, checkpoint and platforms

The model is exported with `kernels='flax'` (stock ops, every backend).
Its inputs are the arrays `mmfusion.data.examples.preprocess` makes: one per
modality and `present/<m>` (bool [b]); its outputs `probabilities` [b, C]
(a classification's; the run's task decides) and the embeddings, as
`Model.apply_batch` gives them. Reloading needs JAX
alone, no mmfusion:

  import jax
  with open('DIR/model.jax_export', 'rb') as f:
    exported = jax.export.deserialize(bytearray(f.read()))
  outputs = exported.call({'image': image_bxHxWxC, 'present/image': ok_b})
"""

import json
import os
import shutil

from absl import app, flags, logging

from mmfusion import predict
from mmfusion.runtime import cli

FILE = 'model.jax_export'
SIGNATURE = 'signature.json'
PLATFORMS = ('cpu', 'cuda', 'tpu')  # lowered for each; stock ops only
KNOWN_PLATFORMS = ('cpu', 'cuda', 'rocm', 'tpu')  # what jax.export lowers for

_PLATFORMS = flags.DEFINE_list(
    'platforms', list(PLATFORMS), 'Backends the artifact runs on.')


def export_model(model, platforms=PLATFORMS):
  """`jax.export.Exported` of `model.forward` with `model.params` embedded,
  polymorphic in the batch size `b`. A portable artifact needs a model
  loaded with kernels='flax' (what `run` does)."""
  import jax  # pylint: disable=g-import-not-at-top
  b, = jax.export.symbolic_shape('b')
  specs = {k: jax.ShapeDtypeStruct((b,) + shape[1:], dtype)
           for k, (shape, dtype) in model.input_spec(1).items()}
  params = model.params
  fn = jax.jit(lambda inputs: model.forward(params, inputs))
  return jax.export.export(fn, platforms=platforms)(specs)


def _described(avals: dict) -> dict:
  """{name: {'shape': ['b', ...], 'dtype'}} of abstract values."""
  return {k: {'shape': [d if isinstance(d, int) else str(d) for d in a.shape],
              'dtype': str(a.dtype)} for k, a in sorted(avals.items())}


def signature(model, exported) -> dict:
  """What a caller of the artifact needs to know, JSON-ready."""
  import jax  # pylint: disable=g-import-not-at-top
  (inputs,), _ = jax.tree.unflatten(exported.in_tree, exported.in_avals)
  outputs = jax.tree.unflatten(exported.out_tree, exported.out_avals)
  return {
      'file': FILE,
      'call': 'jax.export.deserialize(bytes).call(inputs: dict) -> dict',
      'inputs': _described(inputs),
      'outputs': _described(outputs),
      'task': model.task.name,
      'classes': list(model.classes),
      # names of classes, labels or targets; a text target's length and
      # tokenizer (a subword model's bytes, base64), to read the tokens
      'targets': {k: v['names'] if 'names' in v else v
                  for k, v in model.data.targets.items()},
      'modalities': list(model.data.modalities),
      'preprocessing': model.data.preprocessing,
      'data': model.data.name,
      'step': model.step,
      'member': model.member,
      'ensemble': model.ensemble,
      'platforms': list(exported.platforms),
  }


def check_new(out: str):
  """Refuses, in one sentence, an --out that is already there."""
  from mmfusion.runtime import errors  # pylint: disable=g-import-not-at-top
  if os.path.exists(out):
    raise errors.UserError(f'--out={out!r} already exists; pass a new '
                           f'directory (nothing was changed).')


def _serialized(exported) -> bytes:
  from mmfusion.runtime import errors  # pylint: disable=g-import-not-at-top
  try:
    return exported.serialize()
  except ImportError as e:  # jax's serializer needs flatbuffers
    raise errors.UserError(f'cannot serialize the export ({e}); pip install '
                           f'flatbuffers.') from None


def write(model, out: str, platforms=PLATFORMS) -> dict:
  """Exports `model` into the new directory `out`; returns the signature.
  The directory appears whole or not at all."""
  check_new(out)
  exported = export_model(model, platforms)
  sig = signature(model, exported)
  data = _serialized(exported)
  tmp = f'{out.rstrip(os.sep)}.tmp-{os.getpid()}'
  os.makedirs(tmp)
  try:
    with open(os.path.join(tmp, FILE), 'wb') as f:
      f.write(data)
    with open(os.path.join(tmp, SIGNATURE), 'w') as f:
      json.dump(sig, f, indent=2)
    os.rename(tmp, out)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  return sig


def run(workdir: str, out: str, *, checkpoint='best', member=None,
        platforms=PLATFORMS) -> dict:
  """The command: loads `workdir` with kernels='flax' and exports it into
  the new directory `out`; returns the signature. UserError for bad input."""
  from mmfusion import inference  # pylint: disable=g-import-not-at-top
  from mmfusion.runtime import errors  # pylint: disable=g-import-not-at-top
  unknown = sorted(set(platforms) - set(KNOWN_PLATFORMS))
  if unknown or not platforms:
    raise errors.UserError(
        f'--platforms={",".join(platforms)} names no platform or unknown '
        f'ones ({", ".join(unknown)}); choose from '
        f'{", ".join(KNOWN_PLATFORMS)}.')
  check_new(out)  # before the model is loaded
  model = inference.load(workdir, checkpoint, member, kernels='flax')
  return write(model, out, tuple(platforms))


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  # JAX only after flag parsing, so XLA_FLAGS set by a launcher apply.
  from mmfusion.runtime import errors  # pylint: disable=g-import-not-at-top
  cli.use_compilation_cache()
  logging.set_verbosity(logging.ERROR)  # orbax chatter
  workdir, out = cli.WORKDIR.value, cli.OUT.value
  if not workdir or not out:
    cli.fail('--workdir and --out must be given; see --help.')
  try:
    sig = run(workdir, out, checkpoint=predict.CHECKPOINT.value,
              member=predict.MEMBER.value, platforms=_PLATFORMS.value)
  except errors.UserError as e:
    cli.fail(str(e))
  print(f'Exported step {sig["step"]} of {workdir} for '
        f'{", ".join(sig["platforms"])} to {out}.', flush=True)


if __name__ == '__main__':
  for name in ('workdir', 'out', 'checkpoint', 'member',
               'compilation_cache'):
    flags.declare_key_flag(name)  # listed by --help
  app.run(main, flags_parser=cli.parse_flags)
