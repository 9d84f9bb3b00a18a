"""The encoder registry: one entry per config value `model.encoders.<m>.name`.

Every encoder maps one modality's batch array to `(tokens_BxTxD, mask_BxT)`,
with `D == features` and `mask` True for real tokens; a pooled encoder gives
one token. See each module's docstring for its input and the paper it follows;
those marked pretrained load weights (`mmfusion.pretrained`).
"""

import flax.linen as nn

from mmfusion.nn import registry

from mmfusion.encoders import audio
from mmfusion.encoders import bert
from mmfusion.encoders import clip_text
from mmfusion.encoders import efficientnet
from mmfusion.encoders import hf_vit
from mmfusion.encoders import image
from mmfusion.encoders import series
from mmfusion.encoders import speech_embedding
from mmfusion.encoders import text
from mmfusion.encoders import vector
from mmfusion.encoders import video
from mmfusion.encoders import whisper

ENCODERS: dict[str, type[nn.Module]] = {
    # vectors and tabular records [B, F]
    'mlp': vector.Mlp,
    # images [B, H, W, C]
    'cnn': image.Cnn,
    'resnet': image.ResNet,
    'vit': image.ViT,
    'efficientnet_lite': efficientnet.EfficientNetLite,  # pretrained
    'hf_vit': hf_vit.HfViT,  # pretrained: a Hugging Face folder
    'clip_vision': hf_vit.ClipVision,  # pretrained: a Hugging Face folder
    # token ids [B, L], 0 = padding
    'gru': text.TextGru,
    'lstm': text.TextLstm,
    'text_transformer': text.TextTransformer,
    'bert': bert.Bert,  # pretrained; WordPiece ids
    'clip_text': clip_text.ClipText,  # pretrained (Hugging Face); BPE ids
    # waveforms [B, S]
    'audio_cnn': audio.AudioCnn,
    'audio_transformer': audio.AudioTransformer,
    'speech_embedding': speech_embedding.SpeechEmbedding,  # pretrained
    'whisper': whisper.WhisperEncoder,  # pretrained: a Hugging Face folder
    # videos [B, F, H, W, C]
    'video_pool': video.VideoPool,
    'video_transformer': video.VideoTransformer,
    'tubelet': video.Tubelet,
    # time series [B, T, F]
    'tcn': series.Tcn,
    'series_gru': series.SeriesGru,
}


def make_encoder(name: str, *, module_name: str | None = None,
                 **kwargs) -> nn.Module:
  """The encoder registered as `name`, built with the config's options."""
  return registry.build('encoder', name, ENCODERS, kwargs, module_name)
