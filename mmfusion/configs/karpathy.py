"""Image <-> caption retrieval on COCO, Flickr30k or Flickr8k (Karpathy splits).

Two towers, contrastive (CLIP's InfoNCE): image 64x64 -> 3-stage CNN and
caption bytes -> GRU, each projected to 64 and L2-normalised. Reported:
recall@1/5/10 of image -> caption and caption -> image over the whole
validation and test split (one image and its first caption each) and their
mean `recall@K`; the best checkpoint is kept by recall@1. Sized for a 2-core
CPU; a real run wants a GPU.

The data is yours to fetch (mmfusion/data/karpathy.py says what goes where):
Karpathy's split JSON (caption_datasets.zip, cs.stanford.edu/people/karpathy/
deepimagesent) and the images: COCO's train2014/ and val2014/ from
cocodataset.org (annotations CC BY 4.0; images under Flickr's terms of use),
or Flickr30k's / Flickr8k's image folder, each under its own terms
(non-commercial research use).

  --config=mmfusion/configs/karpathy.py:annotations=/data/coco/dataset_coco.json,images=/data/coco
  --config=mmfusion/configs/karpathy.py:annotations=F.json,images=DIR,runlocal
      a seconds-long run (32x32 images, 20 steps)
  ...,captions=first     one training example per image, not per caption
  ...,loss=siglip        SigLIP's sigmoid loss instead of InfoNCE
  --config.data.overrides.restval_in_train=False   COCO's restval apart
"""

import ml_collections

from mmfusion.configs import common

LOSSES = ('infonce', 'siglip')
CAPTIONS = ('all', 'first')
KEYS = ('annotations', 'images', 'captions', 'loss')


def encoders():
  """One small encoder per tower (XLA's CPU conv gradients are slow)."""
  return {
      'image': {'name': 'cnn', 'features': 64, 'channels': (16, 32, 64)},
      'text': {'name': 'gru', 'features': 64},
  }


def get_config(arg: str = ''):
  """`arg`: comma-separated key=value pairs `annotations=FILE` (Karpathy's
  dataset_*.json), `images=DIR` (its images), `captions=all|first`,
  `loss=infonce|siglip`, and `runlocal`."""
  args = [a for a in (arg or '').split(',') if a]
  named = dict(a.split('=', 1) for a in args if '=' in a)
  bare = [a for a in args if '=' not in a]
  if (set(bare) - {'runlocal'} or set(named) - set(KEYS) or
      not all(named.values()) or
      named.get('captions', 'all') not in CAPTIONS or
      named.get('loss', 'infonce') not in LOSSES):
    raise ValueError(f'config arg {arg!r}: expected annotations=FILE, '
                     f'images=DIR, captions= one of {CAPTIONS}, loss= one of '
                     f'{LOSSES}, or runlocal')

  config = ml_collections.ConfigDict()
  config.seed = 0
  # Each example's negatives are the batch's other captions: more is better.
  config.batch_size = 128
  config.total_steps = 3000
  config.eval_every = 500
  config.checkpoint_every = 500
  config.log_every = 100
  config.num_devices = 0  # 0: every visible device
  common.add_run_options(config)
  config.task = ml_collections.ConfigDict({
      'name': 'contrastive', 'loss_fn': named.get('loss', 'infonce'),
      'width': 64, 'towers': (('image',), ('text',)), 'zero_shot': False,
      'prompt': '{}'})
  config.best_metric = 'recall@1'
  config.best_mode = 'max'

  config.data = ml_collections.ConfigDict()
  config.data.name = 'karpathy_captions/default'
  config.data.modalities = ('image', 'text')
  config.data.data_dir = ml_collections.config_dict.placeholder(str)
  # KarpathyConfig fields (mmfusion/data/karpathy.py).
  config.data.overrides = {
      'annotations': named.get('annotations', ''),
      'images_dir': named.get('images', ''),
      'image_size': 64, 'text_length': 80,  # bytes; longer captions are cut
      'captions': named.get('captions', 'all'), 'restval_in_train': True}
  # Probability of hiding each modality of a training example (present/<m>).
  config.data.modality_dropout = {}
  config.data.augment = {}
  config.data.extra_eval_splits = ()

  config.model = ml_collections.ConfigDict()
  config.model.fusion = 'concat'  # within a tower of one modality: pooled
  config.model.fusion_kwargs = {}
  config.model.encoders = encoders()
  config.model.early_encoder = {'name': 'mlp', 'features': 64}
  config.model.head_hidden = (64,)
  common.add_model_options(config.model)
  config.optimizer = common.adamw(grad_clip_norm=1.0)

  if 'runlocal' in args:
    config.total_steps = 20
    config.eval_every = 10
    config.checkpoint_every = 10
    config.log_every = 5
    config.optimizer.warmup_steps = 5
    config.batch_size = 16
    config.data.overrides = {**config.data.overrides, 'image_size': 32,
                             'text_length': 48}
  return config
