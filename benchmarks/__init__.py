"""Performance harness: mmfusion train steps timed side by side with PyTorch.

`python -m benchmarks.run` (see README.md here). `specs` names the models,
`jax_bench` times mmfusion's own `train.train_step`, `torch_models` holds the
same models in PyTorch (an optional extra) and times them in eager mode.
"""
