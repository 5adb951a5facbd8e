"""data2vec 1.0 vision: checkpoints of the BEiT codebase released with data2vec (facebookresearch/
data2vec_vision, ``beit/``), pretrained (``modeling_cyclical.py``) and ImageNet fine-tuned
(``modeling_finetune.py``), into transformers' ``Data2VecVision*`` layout.

Facts about the source layout (keys of ``model`` / ``module`` and of the EMA copy ``model_ema``):

* ``cls_token``, ``mask_token`` (pretraining only), ``pos_embed`` (only with absolute positions),
  ``patch_embed.proj.{weight,bias}``;
* a shared relative position bias ``rel_pos_bias.relative_position_bias_table`` (pretrained) or one
  per block ``blocks.N.attn.relative_position_bias_table`` (fine-tuned), each with a derived
  ``relative_position_index`` buffer;
* per block ``norm1``, ``attn.qkv.weight`` (fused, no bias) with separate ``attn.q_bias`` and
  ``attn.v_bias`` (the key has no bias), ``attn.proj``, ``norm2``, ``mlp.fc1``, ``mlp.fc2`` and the
  layer scales ``gamma_1``/``gamma_2``;
* ``norm`` (final LayerNorm, when not mean pooling) or ``fc_norm`` (mean-pooled LayerNorm) and
  ``head`` (classifier); ``lm_head``, data2vec's regression head, in pretraining files;
* ``model_ema`` holds the EMA teacher with the same keys (timm ``ModelEmaV2``).

The numbers of heads, the patch size and the resolution are read from tensor shapes (relative
position table, patch projection); where a file does not determine them (no relative positions),
its ``args`` (``model`` name, ``input_size``) or the CLI flags are used.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping

import torch
from data2vec_hf import Data2VecVisionForPreTraining, Data2VecVisionPreTrainingConfig
from transformers import Data2VecVisionConfig, Data2VecVisionForImageClassification, Data2VecVisionModel
from transformers.models.data2vec.modeling_data2vec_vision import Data2VecVisionRelativePositionBias

from .checkpoint import plain
from .core import Conversion, Options, Source, build_model, require
from .mapping import ConversionError, ExportView, KeyMapping, safe_literal
from .processors import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, beit_image_processor

logger = logging.getLogger(__name__)

STATE_KEYS = ("model", "module")  # pretraining scripts save `model`, deepspeed fine-tuning `module`
EMA_KEY = "model_ema"
EMA_PREFIX = "model_ema/"

# heads of the BEiT model names the codebase registers (timm `create_model` names)
_HEADS_BY_MODEL = {"base": 12, "large": 16, "huge": 16}


def beit_state(checkpoint: Mapping) -> dict[str, torch.Tensor] | None:
    """The student state dict of a BEiT-codebase file, or None when the file is not one."""
    for key in STATE_KEYS:
        state = checkpoint.get(key)
        if isinstance(state, Mapping) and "blocks.0.attn.qkv.weight" in state and "cls_token" in state:
            return dict(state)
    return None


def is_beit(source: Source) -> bool:
    return source.sections is None and beit_state(source.checkpoint) is not None


# ------------------------------------------------------------------------------------------- layout


def _block_rules(src: str, dst: str) -> list[tuple[str, str]]:
    block = rf"{src}blocks\.(\d+)\."
    out = rf"{dst}encoder.layer.\1."
    return [
        (block + r"norm1\.(weight|bias)", out + r"layernorm_before.\2"),
        (block + r"attn\.q\.weight", out + r"attention.attention.query.weight"),
        (block + r"attn\.k\.weight", out + r"attention.attention.key.weight"),
        (block + r"attn\.v\.weight", out + r"attention.attention.value.weight"),
        (block + r"attn\.q_bias", out + r"attention.attention.query.bias"),
        (block + r"attn\.v_bias", out + r"attention.attention.value.bias"),
        (
            block + r"attn\.relative_position_bias_table",
            out + r"attention.attention.relative_position_bias.relative_position_bias_table",
        ),
        (block + r"attn\.proj\.(weight|bias)", out + r"attention.output.dense.\2"),
        (block + r"norm2\.(weight|bias)", out + r"layernorm_after.\2"),
        (block + r"mlp\.fc1\.(weight|bias)", out + r"intermediate.dense.\2"),
        (block + r"mlp\.fc2\.(weight|bias)", out + r"output.dense.\2"),
        (block + r"gamma_1", out + r"lambda_1"),
        (block + r"gamma_2", out + r"lambda_2"),
        (
            rf"{src}rel_pos_bias\.relative_position_bias_table",
            rf"{dst}encoder.relative_position_bias.relative_position_bias_table",
        ),
        (rf"{src}norm\.(weight|bias)", rf"{dst}layernorm.\1"),
    ]


def _derived_index(src: str) -> list[str]:
    # relative_position_index buffers are derived from the grid; they are checked, then dropped
    return [
        rf"{src}blocks\.\d+\.attn\.relative_position_index",
        rf"{src}rel_pos_bias\.relative_position_index",
    ]


#: The BEiT layout mapped onto the names of ``Data2VecVisionForPreTraining`` (student, regression
#: head, teacher) plus the classification head of ``Data2VecVisionForImageClassification``.
BEIT_MAPPING = KeyMapping(
    rules=[
        (r"cls_token", "data2vec_vision.embeddings.cls_token"),
        (r"mask_token", "data2vec_vision.embeddings.mask_token"),
        (r"pos_embed", "data2vec_vision.embeddings.position_embeddings"),
        (r"patch_embed\.proj\.(weight|bias)", r"data2vec_vision.embeddings.patch_embeddings.projection.\1"),
        *_block_rules("", "data2vec_vision."),
        (r"fc_norm\.(weight|bias)", r"data2vec_vision.pooler.layernorm.\1"),
        (r"head\.(weight|bias)", r"classifier.\1"),
        (r"lm_head\.(weight|bias)", r"final_proj.\1"),
        *_block_rules(EMA_PREFIX, "teacher.model."),
    ],
    drop=[
        *_derived_index(""),
        *_derived_index(EMA_PREFIX),
        # our teacher shares the embeddings with the student (as fairseq's ema_transformer_only) and
        # has no heads of its own
        rf"{EMA_PREFIX}(cls_token|mask_token|pos_embed|patch_embed\.proj\.(weight|bias))",
        rf"{EMA_PREFIX}(lm_head|head|fc_norm)\.(weight|bias)",
    ],
)

_HEADS = [r"final_proj\..*", r"teacher\..*", r"classifier\..*", r"data2vec_vision\.pooler\..*"]
BEIT_ENCODER_VIEW = ExportView(
    BEIT_MAPPING, rename=[("data2vec_vision.", "")], drop_targets=_HEADS, drop_sources=[rf"{EMA_PREFIX}.*"]
)
BEIT_CLASSIFICATION_VIEW = ExportView(
    BEIT_MAPPING,
    rename=[("data2vec_vision.", "data2vec_vision."), ("classifier.", "classifier.")],
    drop_targets=[r"final_proj\..*", r"teacher\..*"],
    drop_sources=[rf"{EMA_PREFIX}.*"],
)


def split_qkv(state: Mapping[str, torch.Tensor], hidden_size: int) -> dict[str, torch.Tensor]:
    """Replace each fused ``attn.qkv.weight`` (3D x D, rows q|k|v) by ``attn.{q,k,v}.weight``."""
    fused = re.compile(r"^(.*attn\.)qkv\.weight$")
    out = {}
    for key, tensor in state.items():
        match = fused.match(key)
        if not match:
            out[key] = tensor
            continue
        if tuple(tensor.shape) != (3 * hidden_size, hidden_size):
            raise ConversionError(
                f"{key} has shape {tuple(tensor.shape)}, expected {(3 * hidden_size, hidden_size)}"
            )
        for name, part in zip("qkv", tensor.split(hidden_size)):
            out[f"{match.group(1)}{name}.weight"] = part
    return out


def check_position_indices(state: Mapping[str, torch.Tensor], window: tuple[int, int]) -> None:
    """The dropped ``relative_position_index`` buffers must be the ones transformers derives."""
    expected = Data2VecVisionRelativePositionBias.generate_relative_position_index(window)
    wrong = [
        k
        for k, v in state.items()
        if k.endswith("relative_position_index")
        and (v.shape != expected.shape or not torch.equal(v.long(), expected))
    ]
    if wrong:
        raise ConversionError(
            f"relative_position_index differs from the {window} grid transformers uses: {', '.join(wrong)}"
        )


# ------------------------------------------------------------------------------------------- config


def _grid_from_table(rows: int) -> int:
    side = (math.isqrt(rows - 3) + 1) // 2
    if (2 * side - 1) ** 2 + 3 != rows:
        raise ConversionError(
            f"relative position table with {rows} rows does not belong to a square patch grid"
        )
    return side


def vision_backbone_config(
    state: Mapping[str, torch.Tensor], args: Mapping, options: Options
) -> Data2VecVisionConfig:
    """A ``Data2VecVisionConfig`` read from the tensor shapes (and ``args`` where shapes are silent)."""
    hidden = state["cls_token"].shape[-1]
    _, channels, patch, patch_w = state["patch_embed.proj.weight"].shape
    require(patch == patch_w, f"non-square patches {patch}x{patch_w} are not supported")
    layers = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks."))
    intermediate = state["blocks.0.mlp.fc1.weight"].shape[0]
    shared = "rel_pos_bias.relative_position_bias_table" in state
    per_layer = "blocks.0.attn.relative_position_bias_table" in state
    table = state.get(
        "rel_pos_bias.relative_position_bias_table", state.get("blocks.0.attn.relative_position_bias_table")
    )

    heads = options.num_attention_heads
    if table is not None:
        require(
            heads in (None, table.shape[1]),
            f"--num_attention_heads {heads} contradicts the file ({table.shape[1]})",
        )
        heads = table.shape[1]
    if heads is None:
        size = next((s for s in _HEADS_BY_MODEL if s in str(args.get("model", ""))), None)
        heads = _HEADS_BY_MODEL.get(size)
    require(
        heads is not None,
        "cannot tell the number of attention heads from this file; pass --num_attention_heads",
    )

    if table is not None:
        image_size = _grid_from_table(table.shape[0]) * patch
    elif "pos_embed" in state:
        image_size = math.isqrt(state["pos_embed"].shape[1] - 1) * patch
    else:
        image_size = options.image_size or args.get("input_size") or 224
    require(
        options.image_size in (None, image_size),
        f"--image_size {options.image_size} contradicts the file ({image_size})",
    )

    mean_pooling = "fc_norm.weight" in state or ("norm.weight" not in state and "head.weight" in state)
    return Data2VecVisionConfig(
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=intermediate,
        image_size=image_size,
        patch_size=patch,
        num_channels=channels,
        use_mask_token="mask_token" in state,
        use_absolute_position_embeddings="pos_embed" in state,
        use_relative_position_bias=per_layer,
        use_shared_relative_position_bias=shared,
        layer_scale_init_value=0.1 if "blocks.0.gamma_1" in state else 0.0,
        drop_path_rate=float(args.get("drop_path", 0.1) or 0.0),
        use_mean_pooling=mean_pooling,
        layer_norm_eps=1e-6,
        num_labels=state["head.weight"].shape[0] if "head.weight" in state else 2,
    )


def _objective_from_args(args: Mapping, layers: int) -> dict:
    """Pretraining fields from the BEiT-codebase run arguments, where they say something."""
    fields = {"average_top_k_layers": min(6, layers)}
    targets = args.get("target_layers")
    if isinstance(targets, str) and targets.strip().startswith("["):
        parsed = safe_literal(targets)
        if parsed:
            fields["average_top_k_layers"] = len(parsed)
    if args.get("l2_loss"):
        fields["loss_beta"] = 0.0
    elif args.get("l1_beta") is not None:
        fields["loss_beta"] = float(args["l1_beta"])
    if args.get("ema_decay_init") is not None:
        fields["ema_decay"] = float(args["ema_decay_init"])
    if args.get("ema_decay") is not None:
        fields["ema_end_decay"] = float(args["ema_decay"])
    if args.get("ema_start_at") is not None:
        fields["ema_anneal_end_step"] = int(args["ema_start_at"])
    return fields


def _normalisation(args: Mapping):
    if args.get("imagenet_default_mean_and_std"):
        return IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
    return (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)


# ---------------------------------------------------------------------------------------- converter


def _source_state(checkpoint: Mapping, student: Mapping, backbone) -> tuple[dict, dict]:
    """The student (and ``model_ema`` teacher) tensors with the fused q/k/v split, and the zero
    query/value biases transformers' attention has where the file (``qkv_bias=False``) has none."""
    state = dict(student)
    ema = checkpoint.get(EMA_KEY)
    if isinstance(ema, Mapping):
        state.update({EMA_PREFIX + k: v for k, v in ema.items()})
    check_position_indices(state, (backbone.image_size // backbone.patch_size,) * 2)
    state = split_qkv(state, backbone.hidden_size)
    extra = {}
    for key in ("query", "value"):
        for i in range(backbone.num_hidden_layers):
            if f"blocks.{i}.attn.{key[0]}_bias" not in state:
                extra[f"data2vec_vision.encoder.layer.{i}.attention.attention.{key}.bias"] = torch.zeros(
                    backbone.hidden_size
                )
    return state, extra


def _pretraining_model(backbone, args: Mapping, checkpoint: Mapping, state: dict, extra: dict, dtype):
    """``Data2VecVisionForPreTraining`` with the file's objective; the teacher copies the student when the
    file has no ``model_ema``."""
    config = Data2VecVisionPreTrainingConfig(
        **{k: v for k, v in backbone.to_dict().items() if k not in ("model_type", "transformers_version")},
        **_objective_from_args(args, backbone.num_hidden_layers),
    )
    if EMA_KEY not in checkpoint:
        logger.info("no model_ema teacher in the file: the teacher starts as a copy of the student")
        state.update({EMA_PREFIX + k: v.clone() for k, v in state.items() if not k.startswith(EMA_PREFIX)})
    extra = {
        **extra,
        **{"teacher.model." + k[len("data2vec_vision.") :]: v.clone() for k, v in extra.items()},
    }
    return build_model(Data2VecVisionForPreTraining, config, state, BEIT_MAPPING, extra, dtype=dtype)


def _details(backbone, checkpoint: Mapping) -> list[tuple[str, object]]:
    if backbone.use_shared_relative_position_bias:
        relative_bias = "shared"
    else:
        relative_bias = "per layer" if backbone.use_relative_position_bias else "none"
    return [
        (
            "hidden size / layers / heads",
            f"{backbone.hidden_size} / {backbone.num_hidden_layers} / {backbone.num_attention_heads}",
        ),
        ("image / patch size", f"{backbone.image_size} / {backbone.patch_size}"),
        ("relative position bias", relative_bias),
        ("absolute position embeddings", backbone.use_absolute_position_embeddings),
        ("layer scale", backbone.layer_scale_init_value > 0),
        ("pooling", "mean + LayerNorm" if backbone.use_mean_pooling else "CLS after final LayerNorm"),
        ("teacher in file", "yes (model_ema)" if EMA_KEY in checkpoint else "no"),
    ]


def convert_vision(source: Source, options: Options) -> Conversion:
    """data2vec 1.0 vision (BEiT codebase): pretrained or ImageNet fine-tuned."""
    checkpoint = source.checkpoint
    student = beit_state(checkpoint)
    require(
        student is not None, f"{source.path.name} has no BEiT-codebase state dict under 'model' or 'module'"
    )
    args = plain(checkpoint.get("args")) or {}
    args = args if isinstance(args, Mapping) else {}
    backbone = vision_backbone_config(student, args, options)
    if options.model_config:
        backbone = Data2VecVisionConfig(**{**backbone.to_dict(), **options.model_config})
    state, extra = _source_state(checkpoint, student, backbone)

    fine_tuned = "head.weight" in student
    export = (
        ("image-classification" if fine_tuned else "encoder") if options.export == "auto" else options.export
    )
    notes = []
    if export == "image-classification":
        require(fine_tuned, "this file has no classification head; use --export encoder or pretraining")
        if backbone.use_mean_pooling and "fc_norm.weight" not in student:
            # `linear_classifier`: a LayerNorm without affine parameters is one with weight 1 and bias 0
            extra["data2vec_vision.pooler.layernorm.weight"] = torch.ones(backbone.hidden_size)
            extra["data2vec_vision.pooler.layernorm.bias"] = torch.zeros(backbone.hidden_size)
        model = build_model(
            Data2VecVisionForImageClassification,
            backbone,
            state,
            BEIT_CLASSIFICATION_VIEW,
            extra,
            dtype=options.dtype,
        )
        notes.append(
            "class names are not stored in the file: labels are LABEL_0 … LABEL_N, in the order of the "
            "training set's classes (for ImageNet-1k models the standard class order)"
        )
    elif export == "pretraining":
        require(not fine_tuned, "a fine-tuned checkpoint has no regression head; use --export encoder")
        require(backbone.use_mask_token, "a pretraining export needs the mask token, which this file lacks")
        model = _pretraining_model(backbone, args, checkpoint, state, extra, options.dtype)
        notes.append(
            "the EMA teacher's own patch embedding, CLS and mask tokens are dropped: data2vec_hf's teacher "
            "shares the embeddings with the student"
        )
    else:
        encoder_extra = {k[len("data2vec_vision.") :]: v for k, v in extra.items()}
        model = build_model(
            Data2VecVisionModel, backbone, state, BEIT_ENCODER_VIEW, encoder_extra, dtype=options.dtype
        )
    mean, std = _normalisation(args)
    return Conversion(
        model=model,
        version="1.0",
        modality="vision",
        kind="fine-tuned image classifier" if fine_tuned else "pretrained",
        export=export,
        pipeline_tag="image-classification"
        if export == "image-classification"
        else "image-feature-extraction",
        processors=[beit_image_processor(backbone.image_size, mean, std)],
        notes=notes,
        details=_details(backbone, checkpoint),
        needs_data2vec_hf=export == "pretraining",
    )
