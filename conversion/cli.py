"""``data2vec-convert`` / ``python -m data2vec_hf.conversion``: fairseq data2vec checkpoints → folders
that ``AutoModel.from_pretrained`` loads.

Steps: check the output folder → read the checkpoint with the weights-only allowlist and hash it →
pick the converter from the checkpoint's own config (``registry.py``) → map every tensor strictly →
write model (safetensors), config, processor/tokenizer and model card into a temporary folder →
optionally reload and verify it → rename it into place → optionally upload it. Any failure leaves
the output folder untouched; user errors end with one ``error: ...`` line and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
import time
from pathlib import Path

import torch
from data2vec_hf.atomic import atomic_folder

from .checkpoint import fairseq_sections, load_checkpoint, sha256_of
from .core import EXPORTS, Conversion, Converter, Options, Source
from .mapping import ConversionError

logger = logging.getLogger("data2vec_hf.conversion")

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "keep": None}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="data2vec-convert",
        description=(
            "Convert a fairseq data2vec checkpoint (data2vec 1.0 audio: pretrained or CTC fine-tuned; "
            "1.0 text; 1.0 vision from the BEiT codebase: pretrained or ImageNet fine-tuned; data2vec 2.0 "
            "audio, image and text: pretrained, CTC / image-classification / text-classification "
            "fine-tuned) into a folder that transformers' AutoModel.from_pretrained loads (after "
            "`import data2vec_hf` for 2.0). Modality and version are detected from the checkpoint's own "
            "config."
        ),
    )
    parser.add_argument("--checkpoint", required=True, type=Path, help="fairseq / BEiT-codebase .pt file")
    parser.add_argument("--output_dir", required=True, type=Path, help="folder to write (created)")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --output_dir")
    parser.add_argument(
        "--export",
        choices=EXPORTS,
        default="auto",
        help="auto: the encoder of a pretrained file, the task model (CTC, image or text classification) "
        "of a fine-tuned one; encoder: the bare encoder (heads, decoder and EMA teacher dropped); "
        "pretraining: the full Data2Vec*ForPreTraining / Data2Vec2*ForPreTraining (student, regression "
        "head or decoder, EMA teacher; needs `import data2vec_hf`)",
    )
    parser.add_argument("--dtype", choices=DTYPES, default="float32", help="dtype of the written weights")
    parser.add_argument(
        "--remote_code",
        action="store_true",
        help="data2vec 2.0: also write self-contained configuration and modelling files and an auto_map, so "
        "that transformers loads the folder with trust_remote_code=True where data2vec_hf is not installed",
    )

    detection = parser.add_argument_group("overrides for odd files")
    detection.add_argument("--modality", choices=("audio", "text", "vision"), help="force the modality")
    detection.add_argument(
        "--version",
        choices=("1", "2"),
        help="force the data2vec version",
    )
    detection.add_argument(
        "--model_config",
        help="JSON object (or path to a JSON file) merged into the file's model config (fairseq field "
        "names; for vision: transformers Data2VecVisionConfig fields); also supplies a missing config",
    )
    detection.add_argument(
        "--num_attention_heads", type=int, help="vision: heads, when the file does not tell"
    )
    detection.add_argument("--image_size", type=int, help="vision: resolution, when the file does not tell")

    vocab = parser.add_argument_group("vocabularies")
    vocab.add_argument(
        "--dict",
        dest="dict_path",
        type=Path,
        metavar="DICT",
        help="fairseq dictionary: dict.ltr.txt (CTC) or dict.txt (text)",
    )
    vocab.add_argument("--encoder_json", type=Path, help="text: GPT-2 BPE encoder.json")
    vocab.add_argument("--vocab_bpe", type=Path, help="text: GPT-2 BPE vocab.bpe (merges)")

    check = parser.add_argument_group("verification")
    check.add_argument(
        "--verify",
        nargs="?",
        const="",
        metavar="REFERENCE.safetensors",
        help="reload the written model and compare it with fairseq (when importable) and with the given "
        "reference outputs (format of tests/fixtures/fairseq/*.outputs.safetensors in this repository); nothing is "
        "written when they disagree",
    )
    check.add_argument("--tolerance", type=float, default=1e-4, help="max abs difference allowed by --verify")

    hub = parser.add_argument_group("Hub")
    hub.add_argument("--push_to_hub", action="store_true", help="upload the folder (safetensors only)")
    hub.add_argument("--hub_model_id", help="repo id (default: the output folder's name)")
    hub.add_argument("--hub_token", help="token (default: the logged-in one)")
    hub.add_argument("--hub_private_repo", action="store_true")
    parser.add_argument("--quiet", action="store_true", help="log warnings and errors only")
    return parser


def _model_config(value: str | None) -> dict:
    if not value:
        return {}
    text = Path(value).read_text(encoding="utf-8") if os.path.isfile(value) else value
    try:
        parsed = json.loads(text)
    except json.JSONDecodeError as error:
        raise ConversionError(f"--model_config is neither a JSON object nor a JSON file: {error}") from None
    if not isinstance(parsed, dict):
        raise ConversionError("--model_config must be a JSON object")
    return parsed


def _check_output_dir(output_dir: Path, overwrite: bool) -> None:
    if output_dir.exists() and not output_dir.is_dir():
        raise ConversionError(f"--output_dir {output_dir} exists and is not a folder")
    if output_dir.is_dir() and any(output_dir.iterdir()) and not overwrite:
        raise ConversionError(f"--output_dir {output_dir} is not empty; pass --overwrite to replace it")


def _check_inputs(args, output_dir: Path) -> None:
    inputs = [args.checkpoint, args.dict_path, args.encoder_json, args.vocab_bpe]
    inputs += [Path(args.verify)] if args.verify else []
    for path in inputs:
        if path is not None and output_dir in Path(path).resolve().parents:
            raise ConversionError(
                f"{path} lies inside --output_dir {output_dir}, which the conversion replaces"
            )
    for flag in ("dict_path", "encoder_json", "vocab_bpe"):
        path = getattr(args, flag)
        if path is not None and not path.is_file():
            raise ConversionError(f"--{flag.replace('_path', '')} {path} does not exist")
    if args.verify and not Path(args.verify).is_file():
        raise ConversionError(f"--verify {args.verify} does not exist")


def _usage(
    conversion: Conversion, repo: str, has_processor: bool, has_tokenizer: bool, remote_code: bool = False
) -> str:
    usage = _usage_body(conversion, repo, has_processor, has_tokenizer)
    if remote_code:  # the folder's own code: no data2vec_hf, every load trusts it
        usage = usage.replace("import data2vec_hf  # registers the data2vec pretraining models\n", "")
        return usage.replace(
            f'.from_pretrained("{repo}")', f'.from_pretrained("{repo}", trust_remote_code=True)'
        )
    if conversion.version == "2.0" and conversion.export != "pretraining":
        usage = (
            "import data2vec_hf  # registers the data2vec 2.0 models with transformers' Auto classes\n"
            + usage
        )
    return usage


def _usage_body(conversion: Conversion, repo: str, has_processor: bool, has_tokenizer: bool) -> str:
    model_cls = type(conversion.model).__name__
    if conversion.export == "pretraining":
        return (
            "import data2vec_hf  # registers the data2vec pretraining models\n"
            "from transformers import AutoModelForPreTraining\n\n"
            f'model = AutoModelForPreTraining.from_pretrained("{repo}")  # {model_cls}\n'
            "out = model(...)  # loss, target_var, pred_var, ... (see data2vec_hf)"
        )
    if conversion.modality == "audio" and conversion.export == "ctc":
        if has_tokenizer:
            return (
                "import torch\nfrom transformers import AutoModelForCTC, AutoProcessor\n\n"
                f'processor = AutoProcessor.from_pretrained("{repo}")\n'
                f'model = AutoModelForCTC.from_pretrained("{repo}")\n'
                'inputs = processor(waveform, sampling_rate=16000, return_tensors="pt")  # 16 kHz mono\n'
                "ids = model(**inputs).logits.argmax(-1)\n"
                "print(processor.batch_decode(ids))"
            )
        return (
            f'from transformers import AutoModelForCTC\n\nmodel = AutoModelForCTC.from_pretrained("{repo}")'
        )
    if conversion.modality == "audio" and conversion.export == "audio-classification":
        return (
            "from transformers import AutoFeatureExtractor, AutoModelForAudioClassification\n\n"
            f'feature_extractor = AutoFeatureExtractor.from_pretrained("{repo}")\n'
            f'model = AutoModelForAudioClassification.from_pretrained("{repo}")  # {model_cls}\n'
            'inputs = feature_extractor(waveform, sampling_rate=16000, return_tensors="pt")  # 16 kHz mono\n'
            "probabilities = model(**inputs).logits.sigmoid()  # multi-label: one probability per label"
        )
    if conversion.modality == "audio":
        return (
            "from transformers import AutoFeatureExtractor, AutoModel\n\n"
            f'feature_extractor = AutoFeatureExtractor.from_pretrained("{repo}")\n'
            f'model = AutoModel.from_pretrained("{repo}")  # {model_cls}\n'
            'inputs = feature_extractor(waveform, sampling_rate=16000, return_tensors="pt")  # 16 kHz mono\n'
            "hidden_states = model(**inputs).last_hidden_state"
        )
    if conversion.modality == "text":
        classifier = conversion.export == "sequence-classification"
        auto = "AutoModelForSequenceClassification" if classifier else "AutoModel"
        lines = [f"from transformers import {auto}" + (", AutoTokenizer" if has_tokenizer else ""), ""]
        if has_tokenizer:
            lines.append(f'tokenizer = AutoTokenizer.from_pretrained("{repo}")')
        lines.append(f'model = {auto}.from_pretrained("{repo}")  # {model_cls}')
        if has_tokenizer:
            lines += [
                'inputs = tokenizer("Hello world!", return_tensors="pt")',
                "logits = model(**inputs).logits"
                if classifier
                else "hidden_states = model(**inputs).last_hidden_state",
            ]
        return "\n".join(lines)
    auto = "AutoModelForImageClassification" if conversion.export == "image-classification" else "AutoModel"
    output = "logits" if conversion.export == "image-classification" else "last_hidden_state"
    return (
        f"from PIL import Image\nfrom transformers import AutoImageProcessor, {auto}\n\n"
        f'processor = AutoImageProcessor.from_pretrained("{repo}")\n'
        f'model = {auto}.from_pretrained("{repo}")  # {model_cls}\n'
        'inputs = processor(Image.open("image.jpg").convert("RGB"), return_tensors="pt")\n'
        f"{output} = model(**inputs).{output}"
    )


def write_model_card(
    folder: Path, conversion: Conversion, converter: Converter, source: Source, args, checks
) -> None:
    from data2vec_hf.cards import render_model_card
    from huggingface_hub import ModelCard, ModelCardData

    files = {p.name for p in folder.iterdir()}
    has_tokenizer = bool(files & {"tokenizer.json", "vocab.json", "tokenizer_config.json"})
    repo = args.hub_model_id or args.output_dir.name
    card = render_model_card(
        "converted",
        ModelCardData(
            library_name="transformers",
            pipeline_tag=conversion.pipeline_tag,
            tags=[
                "data2vec",
                f"data2vec-{conversion.version}",
                conversion.modality,
                "fairseq-conversion",
                "data2vec-hf",
            ],
        ),
        model_name=repo,
        version=conversion.version,
        modality=conversion.modality,
        source_name=source.path.name,
        sha256=source.sha256,
        converter=converter.name,
        kind=conversion.kind,
        architecture=type(conversion.model).__name__,
        export=conversion.export,
        loader=_loader(conversion, getattr(args, "remote_code", False)),
        usage=_usage(
            conversion, repo, bool(conversion.processors), has_tokenizer, getattr(args, "remote_code", False)
        ),
        details=[(k, v) for k, v in conversion.details],
        verification=[(c.name, f"{c.max_abs_diff:.2e}", f"{c.tolerance:.0e}") for c in checks],
        notes=conversion.notes,
    )
    if getattr(args, "remote_code", False):
        card = ModelCard(remote_code_card(card.content))
    card.save(folder / "README.md")


REMOTE_CODE_NOTE = (
    "**data2vec 2.0 is not part of transformers; this folder carries its own code** "
    "(`configuration_*.py` and `modeling_*.py`, generated by data2vec-hf from its source). Load it with "
    "`trust_remote_code=True`, which runs that code; data2vec-hf need not be installed (where it is "
    "installed and imported, its own classes are used instead).\n"
)


def remote_code_card(content: str) -> str:
    """A converted 2.0 card, told that the folder loads with ``trust_remote_code=True``: the template's
    "run ``import data2vec_hf``" paragraph is replaced (or, if the template no longer has it, the note
    goes before the usage)."""
    pattern = re.compile(r"\*\*data2vec 2\.0 is not part of transformers.*?Auto classes\)\.\n", re.DOTALL)
    if pattern.search(content):
        return pattern.sub(lambda _: REMOTE_CODE_NOTE, content, count=1)
    return content.replace("## How to use", REMOTE_CODE_NOTE + "\n## How to use", 1)


def _loader(conversion: Conversion, remote_code: bool) -> str:
    if remote_code:
        return "transformers with `trust_remote_code=True` (the folder's own code; data2vec_hf not needed)"
    return "`import data2vec_hf` + transformers" if conversion.needs_data2vec_hf else "plain transformers"


def _reload(conversion: Conversion, folder: Path):
    """The written folder loaded back with the exported class (what ``AutoModel`` gives)."""
    model_cls = type(conversion.model)
    kwargs = {}
    if getattr(conversion.model, "pooler", "absent") is None and conversion.modality == "text":
        kwargs["add_pooling_layer"] = False
    return model_cls.from_pretrained(folder, **kwargs).eval()


def _options(args) -> Options:
    return Options(
        export=args.export,
        dtype=DTYPES[args.dtype],
        dict_path=args.dict_path,
        encoder_json=args.encoder_json,
        vocab_bpe=args.vocab_bpe,
        model_config=_model_config(args.model_config),
        num_attention_heads=args.num_attention_heads,
        image_size=args.image_size,
    )


def _read_source(args, options: Options) -> Source:
    """The checkpoint with its hash and fairseq sections; a ``--model_config`` stands in for a stripped
    audio/text config."""
    logger.info("reading %s", args.checkpoint)
    checkpoint = load_checkpoint(args.checkpoint)
    source = Source(
        Path(args.checkpoint), checkpoint, sha256_of(args.checkpoint), fairseq_sections(checkpoint)
    )
    if source.sections is None and options.model_config and args.modality in ("audio", "text"):
        source.sections = (dict(options.model_config), {})
        options.model_config = {}
    logger.info("sha256 %s", source.sha256)
    return source


def _run_converter(converter: Converter, source: Source, options: Options) -> Conversion:
    """``converter.convert``, with a missing setting/tensor or a rejected config as a ConversionError."""
    try:
        conversion = converter.convert(source, options)
    except ConversionError:
        raise
    except KeyError as error:  # a setting or tensor the layout needs is absent
        raise ConversionError(f"the checkpoint lacks {error} ({converter.name})") from error
    except ValueError as error:  # transformers rejects the translated config
        raise ConversionError(f"cannot build the model from the checkpoint's config: {error}") from error
    model = conversion.model
    logger.info(
        "mapped %d tensors into %s (%s parameters, %s)",
        len(model.state_dict()),
        type(model).__name__,
        f"{sum(p.numel() for p in model.parameters()):,}",
        conversion.export,
    )
    return conversion


def _verify(conversion: Conversion, source: Source, args, scratch: Path) -> list:
    """``--verify``: the written model, loaded back, against fairseq and/or a reference file."""
    from .verify import compare_with_fairseq, compare_with_reference, require_agreement

    conversion.model = _reload(conversion, scratch)
    checks = []
    fairseq_checks = compare_with_fairseq(source.path, conversion, args.verify or None, args.tolerance)
    if fairseq_checks is not None:
        require_agreement(fairseq_checks, "fairseq")
        checks += fairseq_checks
    if args.verify:
        reference_checks = compare_with_reference(
            conversion.model, conversion.modality, args.verify, args.tolerance, conversion.version
        )
        require_agreement(reference_checks, f"reference {Path(args.verify).name}")
        checks += reference_checks
    if not checks:
        logger.warning("--verify without a reference file and without fairseq: nothing was compared")
    return checks


def _write_folder(scratch: Path, conversion: Conversion, converter: Converter, source: Source, args) -> None:
    """Model, remote code, processors, checks and model card into ``scratch``."""
    conversion.model.save_pretrained(scratch, safe_serialization=True)
    if args.remote_code:
        from data2vec_hf.remote_code import export_remote_code

        export_remote_code(conversion.model, scratch)
    for processor in conversion.processors:
        processor.save_pretrained(scratch)
    logger.info("wrote %s", ", ".join(sorted(p.name for p in scratch.iterdir())))
    checks = _verify(conversion, source, args, scratch) if args.verify is not None else []
    write_model_card(scratch, conversion, converter, source, args, checks)


def _push(args, output_dir: Path) -> None:
    from data2vec_hf.hub import push_folder_to_hub

    repo_id = args.hub_model_id or output_dir.name
    try:
        push_folder_to_hub(output_dir, repo_id, token=args.hub_token, private=args.hub_private_repo or None)
    except Exception as error:  # network, authentication, permissions
        raise ConversionError(
            f"upload to {repo_id} failed ({error}); the folder is at {output_dir}"
        ) from error
    logger.info("uploaded to %s", repo_id)


def convert(args) -> Path:
    """Run one conversion (parsed ``args``); returns the output folder."""
    from .registry import select

    started = time.perf_counter()
    output_dir: Path = args.output_dir.resolve()
    _check_output_dir(output_dir, args.overwrite)
    _check_inputs(args, output_dir)
    options = _options(args)
    source = _read_source(args, options)
    version = {"1": "1.0", "2": "2.0"}.get(args.version)
    converter = select(source, args.modality, version)
    logger.info("detected %s (%s); export: %s", converter.name, converter.describe, args.export)
    if args.remote_code and converter.version != "2.0":
        raise ConversionError(
            "--remote_code is for data2vec 2.0 models; a converted data2vec 1.0 encoder or head loads in "
            "plain transformers already"
        )
    conversion = _run_converter(converter, source, options)

    created = [p for p in [output_dir.parent, *output_dir.parent.parents] if not p.exists()]
    try:
        with atomic_folder(output_dir) as scratch:  # replaces an earlier conversion only when complete
            _write_folder(scratch, conversion, converter, source, args)
    except BaseException:
        for folder in created:
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
        raise
    logger.info("done in %.1f s: %s", time.perf_counter() - started, output_dir)
    if args.push_to_hub:
        _push(args, output_dir)
    return output_dir


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        format="data2vec-convert: %(message)s",
        level=logging.WARNING if args.quiet else logging.INFO,
        force=True,
    )
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
    try:
        convert(args)
    except ConversionError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0
