"""Run options every config shares: task, sharding, accumulation, vmap, best."""

import ml_collections

# Where `make tuxpaint` unpacks Tux Paint's stamps (tuxpaint.DEFAULT_DIR;
# written out so that reading a config imports no dataset code).
TUXPAINT_DIR = '~/.cache/mmfusion/tuxpaint'


def add_run_options(config: ml_collections.ConfigDict):
  """Sets the task (classification unless a config says otherwise) and the
  scale and reliability keys (README, "Scale and reliability")."""
  config.task = ml_collections.ConfigDict({'name': 'classification'})
  config.fsdp = False  # shard params + optimizer state over `data`
  config.fsdp_min_size = 2**14  # arrays smaller than this stay replicated
  config.grad_accum_steps = 1  # micro-batches per step (same global batch)
  config.keep_checkpoints = 3
  config.best_metric = 'accuracy'  # validation metric of the kept best/
  config.best_mode = 'max'
  # K runs in one compiled program (jax.vmap over the train state): seeds
  # seed..seed+K-1, or K peak learning rates (key='optimizer.learning_rate').
  config.vmap = ml_collections.ConfigDict(
      {'size': 1, 'key': 'seed', 'values': ()})
  return config


def add_model_options(model: ml_collections.ConfigDict):
  """The model keys every config sets the same way (README, "Kernels")."""
  model.dtype = 'float32'
  model.remat = False  # nn.remat on encoders: less memory, more compute
  # 'auto': the fast XLA:CPU kernels on CPU, stock flax ops elsewhere
  # (mmfusion/nn/kernels); 'flax' or 'xla_cpu' to choose.
  model.kernels = 'auto'
  return model


def adamw(learning_rate: float = 3e-3, grad_clip_norm: float = 0.0):
  """AdamW with linear warmup and cosine decay (`build.make_optimizer`)."""
  return ml_collections.ConfigDict({
      'name': 'adamw', 'learning_rate': learning_rate, 'warmup_steps': 100,
      'final_lr_fraction': 0.01, 'b1': 0.9, 'b2': 0.999,
      'weight_decay': 1e-4,
      'grad_clip_norm': grad_clip_norm})  # 0: no clipping


# Pretrained encoders (mmfusion/pretrained): how a run may train them, and
# MiniLM's checkpoint, whose WordPiece tokenizer the data must then use.
FINETUNE = ('full', 'frozen')
TEXT_CHECKPOINT = 'all-MiniLM-L6-v2'


def pretrained_encoders(finetune: str):
  """The pretrained encoder of each modality that has one here; a
  fine-tuned one learns at a tenth of the run's rate."""
  run = {'finetune': finetune, 'lr_scale': 0.1 if finetune == 'full' else 1.0}
  return {
      'audio': {'name': 'speech_embedding', 'features': 64,
                'checkpoint': 'speech-embedding', **run},
      # Small images upsampled to half ImageNet's size: a quarter the cost.
      'image': {'name': 'efficientnet_lite', 'features': 64,
                'checkpoint': 'efficientnet-lite0', 'image_size': 112, **run},
      # Reads WordPiece ids: the config builds the text with MiniLM's
      # tokenizer (data.overrides.text_tokenizer).
      'text': {'name': 'bert', 'features': 64,
               'checkpoint': TEXT_CHECKPOINT, **run},
  }
