"""The one place converters are registered, and how a checkpoint finds its converter.

Detection reads the checkpoint's own config: fairseq's ``cfg.model._name`` (or legacy ``args.arch``),
the model wrapped by a fine-tuned file (``w2v_args``), or, for files without a fairseq config, the
BEiT-codebase state-dict layout. ``--modality`` / ``--version`` override detection for odd files.

A converter is added (or replaced, by name) with ``register(Converter(...))``; an entry whose
``convert`` is None recognises a format and refuses it with its ``unsupported`` message.
"""

from __future__ import annotations

import logging

from .beit_v1 import convert_vision, is_beit
from .core import Converter, Source
from .fairseq_v1 import convert_audio, convert_text, inner_model_name, is_ctc
from .fairseq_v2 import convert_v2
from .fairseq_v2_formats import is_data2vec2, modality_of
from .mapping import ConversionError

logger = logging.getLogger(__name__)

CONVERTERS: list[Converter] = []


def register(converter: Converter) -> None:
    """Add ``converter``; an entry with the same name is replaced."""
    CONVERTERS[:] = [c for c in CONVERTERS if c.name != converter.name]
    CONVERTERS.append(converter)


def _is_v1_audio(source: Source) -> bool:
    return source.model_name == "data2vec_audio" or (
        is_ctc(source) and inner_model_name(source) in ("data2vec_audio", None)
    )


def v2_modality(source: Source) -> str | None:
    """The modality of a data2vec 2.0 file (``audio``/``vision``/``text``), or None."""
    return modality_of(source)


register(
    Converter(
        "data2vec-1.0-audio",
        "1.0",
        "audio",
        matches=_is_v1_audio,
        convert=convert_audio,
        describe="fairseq data2vec_audio (pretrained) and wav2vec_ctc over it (CTC fine-tuned)",
    )
)
register(
    Converter(
        "data2vec-1.0-text",
        "1.0",
        "text",
        matches=lambda s: s.model_name == "data2vec_text",
        convert=convert_text,
        describe="fairseq data2vec_text (pretrained)",
    )
)
register(
    Converter(
        "data2vec-1.0-vision",
        "1.0",
        "vision",
        matches=is_beit,
        convert=convert_vision,
        describe="BEiT-codebase data2vec vision (pretrained, ImageNet fine-tuned)",
    )
)
register(
    Converter(
        "data2vec-2.0",
        "2.0",
        None,
        matches=is_data2vec2,
        convert=convert_v2,
        describe="fairseq data2vec_multi (pretrained audio/image/text), wav2vec_ctc, "
        "mae_image_classification and data2vec_text_classification around it (fine-tuned)",
    )
)


def _summary(source: Source) -> str:
    if source.sections:
        inner = inner_model_name(source)
        return f"fairseq model {source.model_name!r}" + (f" around {inner!r}" if inner else "")
    keys = list(source.checkpoint)
    return f"no fairseq config (cfg/args) and no BEiT-codebase state dict; top-level keys: {keys[:10]}"


def select(source: Source, modality: str | None = None, version: str | None = None) -> Converter:
    """The converter for ``source``: detected from its config, narrowed or forced by the overrides."""
    detected = [c for c in CONVERTERS if c.matches(source)]
    if modality or version:
        wanted = [
            c
            for c in CONVERTERS
            if (version is None or c.version == version)
            and (modality is None or c.modality in (None, modality))
        ]
        chosen = [c for c in detected if c in wanted] or wanted
        if detected and not set(chosen) & set(detected):
            logger.warning(
                "overriding detection (%s) with --modality %s --version %s",
                detected[0].name,
                modality or "-",
                version or "-",
            )
    else:
        chosen = detected
    if not chosen:
        supported = "; ".join(f"{c.name}: {c.describe}" for c in CONVERTERS)
        raise ConversionError(
            f"not a data2vec checkpoint this tool knows ({_summary(source)}). Supported: {supported}. "
            "Pass --modality/--version to force a converter for a file with a stripped config"
        )
    converter = chosen[0]
    if converter.convert is None:
        found = v2_modality(source) if converter.modality is None else converter.modality
        detail = f" (detected {_summary(source)}{f', modality {found}' if found else ''})"
        raise ConversionError(f"{converter.unsupported}{detail}")
    return converter
