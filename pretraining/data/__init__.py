"""Data pipelines of the pretraining scripts: load, check, decode, filter, tokenize, batch and collate.

One module per concern; the names most scripts need are importable from here:

- :mod:`.sources`: where raw examples come from (Hub, local folder, manifest, text files, default corpus);
- :mod:`.common`: what every modality shares (errors, kept/skipped counts, cached ``map``, tensor helpers);
- :mod:`.audio`, :mod:`.image`, :mod:`.text`: decoding, filtering and collating, one file per modality;
- :mod:`.corpora`: the embedded default corpora, built offline;
- :mod:`.batching`: which examples go into which batch, and each example's random stream;
- :mod:`.streaming`: batches of a streamed dataset over processes and DataLoader workers, resumable.

The submodules import each other, never this package, so that importing any one of them alone works.
"""

from .audio import (
    AudioCollator,
    feature_encoder_receptive_field,
    prepare_audio_dataset,
    random_crop,
    read_audio,
    zero_mean_unit_var,
)
from .common import DataError, DataStats, UnreadableError, pad_sequences
from .image import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ImageCollator,
    build_image_transform,
    prepare_image_dataset,
    read_image,
)
from .sources import (
    DEFAULT_COLUMNS,
    FILE_EXTENSIONS,
    MODALITIES,
    data_source_kwargs,
    disable_decoding,
    load_raw_dataset,
    read_table,
    resolve_column,
)
from .text import (
    SPECIAL_TOKENS,
    TextCollator,
    load_or_train_tokenizer,
    prepare_text_dataset,
    train_bpe_tokenizer,
)

__all__ = [
    "AudioCollator",
    "DEFAULT_COLUMNS",
    "DataError",
    "DataStats",
    "FILE_EXTENSIONS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ImageCollator",
    "MODALITIES",
    "SPECIAL_TOKENS",
    "TextCollator",
    "UnreadableError",
    "build_image_transform",
    "data_source_kwargs",
    "disable_decoding",
    "feature_encoder_receptive_field",
    "load_or_train_tokenizer",
    "load_raw_dataset",
    "prepare_audio_dataset",
    "prepare_image_dataset",
    "prepare_text_dataset",
    "read_audio",
    "read_image",
    "pad_sequences",
    "random_crop",
    "read_table",
    "resolve_column",
    "train_bpe_tokenizer",
    "zero_mean_unit_var",
]
