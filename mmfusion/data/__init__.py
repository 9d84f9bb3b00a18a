"""Datasets as TFDS builders (array_record, no TensorFlow), read through Grain.

Importing this package registers mmfusion's builders with TFDS, so
`config.data.name` can name them like any catalog dataset.
"""

from mmfusion.data import synthetic_interactions  # noqa: F401  (registers)

# Builders that ship with mmfusion and build offline; `data.name` may also name
# any other TFDS dataset, which then needs its own download.
BUILDERS = {
    'synthetic_interactions': synthetic_interactions.SyntheticInteractions,
}
