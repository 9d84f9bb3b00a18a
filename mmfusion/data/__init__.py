"""Datasets as TFDS builders (array_record, no TensorFlow), read through Grain.

Importing this package registers mmfusion's builders with TFDS, so
`config.data.name` can name them like any catalog dataset.
"""

from mmfusion.data import av_digits  # noqa: F401  (registers)
from mmfusion.data import karpathy  # noqa: F401  (registers)
from mmfusion.data import manifest  # noqa: F401  (registers)
from mmfusion.data import mmimdb  # noqa: F401  (registers)
from mmfusion.data import multibench  # noqa: F401  (registers)
from mmfusion.data import synthetic_interactions  # noqa: F401  (registers)
from mmfusion.data import tuxpaint  # noqa: F401  (registers)
from mmfusion.data import video_folder  # noqa: F401  (registers)

# Builders that ship with mmfusion and build offline; `data.name` may also name
# any other TFDS dataset, which then needs its own download.
BUILDERS = {
    'av_digits': av_digits.AvDigits,
    'karpathy_captions': karpathy.KarpathyCaptions,
    'manifest': manifest.Manifest,
    'mmimdb': mmimdb.MmImdb,
    'multibench_affect': multibench.MultibenchAffect,
    'synthetic_interactions': synthetic_interactions.SyntheticInteractions,
    'tuxpaint': tuxpaint.Tuxpaint,
    'video_folder': video_folder.VideoFolder,
}
