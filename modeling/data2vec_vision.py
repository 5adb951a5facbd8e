"""data2vec 1.0 vision: pretraining config and model on transformers' ``Data2VecVisionModel``."""

from __future__ import annotations

import torch
from huggingface_hub.dataclasses import strict
from torch import nn
from transformers import Data2VecVisionConfig, Data2VecVisionModel
from transformers.models.data2vec.modeling_data2vec_vision import Data2VecVisionPreTrainedModel

from .masking import BlockMaskGenerator
from .objective import OBJECTIVE_DOC, Data2VecBackboneConfigMixin, Data2VecPreTrainingMixin
from .targets import record_outputs


@strict
class Data2VecVisionPreTrainingConfig(Data2VecVisionConfig, Data2VecBackboneConfigMixin):
    __doc__ = (
        """Configuration of :class:`Data2VecVisionForPreTraining`.

    All fields of ``transformers.Data2VecVisionConfig`` describe the (BEiT-style) backbone; pretraining
    needs ``use_mask_token=True``. Defaults follow fairseq's ``data2vec_vision`` model and its
    ``examples/data2vec/config/vision/pretraining/base_imagenet_d2v1.yaml`` (layer scale 1e-4, attention
    dropout 0.05, drop path 0.25, block-output targets, EMA annealed over the whole run) and the paper's
    60% block masking (the BEiT-codebase recipe the released models were trained with).

    Target field:

        end_of_block_targets (`bool`): targets are the blocks' outputs after the residual connection
            (fairseq's default and the BEiT-codebase ``--layer_results end``); False regresses the
            (layer-scaled) FFN outputs before it, as the paper describes for audio and text.

    Masking fields:

        mask_ratio (`float`): fraction of patches masked per image (0.6).
        min_mask_patches_per_block (`int`): smallest masked block, in patches (16).
        max_mask_patches_per_block (`int`, *optional*): largest block (default: no limit but the total).
        mask_min_aspect (`float`): smallest block aspect ratio; the largest is its inverse (0.3).
"""
        + OBJECTIVE_DOC
    )

    model_type = "data2vec-vision-pretraining"
    backbone_config_class = Data2VecVisionConfig
    pretraining_only_fields = (
        "end_of_block_targets",
        "mask_ratio",
        "min_mask_patches_per_block",
        "max_mask_patches_per_block",
        "mask_min_aspect",
    )

    # backbone defaults for pretraining (BEiT layout with a final LayerNorm)
    use_mask_token: bool = True
    use_shared_relative_position_bias: bool = True
    use_mean_pooling: bool = False
    layer_norm_eps: float = 1e-6
    drop_path_rate: float | int = 0.25
    layer_scale_init_value: float | int = 1e-4
    attention_probs_dropout_prob: float | int = 0.05
    # objective
    end_of_block_targets: bool = True
    average_top_k_layers: int = 6
    layer_norm_targets: bool = True
    loss_beta: float | int = 2.0
    ema_decay: float = 0.999
    ema_end_decay: float = 0.9998
    ema_anneal_end_step: int | None = None  # the whole run (fairseq: ${optimization.max_update})
    # fairseq's data2vec_vision has no collapse guard
    min_target_var: float = 0.0
    min_pred_var: float = 0.0
    # masking
    mask_ratio: float = 0.6
    min_mask_patches_per_block: int = 16
    max_mask_patches_per_block: int | None = None
    mask_min_aspect: float = 0.3


def block_mask_sampler(config) -> BlockMaskGenerator:
    """The BEiT block-mask sampler for the config's patch grid and masking fields."""
    image, patch = config.image_size, config.patch_size
    image = image if isinstance(image, list | tuple) else (image, image)
    patch = patch if isinstance(patch, list | tuple) else (patch, patch)
    height, width = image[0] // patch[0], image[1] // patch[1]
    return BlockMaskGenerator(
        height,
        width,
        num_masking_patches=max(1, round(config.mask_ratio * height * width)),
        min_num_patches=config.min_mask_patches_per_block,
        max_num_patches=config.max_mask_patches_per_block,
        min_aspect=config.mask_min_aspect,
    )


def sample_vision_masks(config, batch: dict, generators: list[torch.Generator]) -> dict:
    """Per-example block masks; returns the forward argument ``bool_masked_pos``."""
    sampler = block_mask_sampler(config)
    return {"bool_masked_pos": torch.stack([sampler.sample(g).flatten() for g in generators])}


class Data2VecVisionForPreTraining(Data2VecPreTrainingMixin, Data2VecVisionPreTrainedModel):
    """data2vec 1.0 vision pretraining: a ``Data2VecVisionModel`` student with a mask token, a linear
    regression head and an EMA teacher of the transformer encoder (patch embedding, CLS token and
    position embeddings are shared with the student, as in fairseq's ``ema_transformer_only``)."""

    config_class = Data2VecVisionPreTrainingConfig
    teacher_shared = ("embeddings",)
    _keys_to_ignore_on_load_unexpected = [r"^classifier\.", r"pooler\.", r"relative_position_index"]
    # transformers' Data2VecVisionModel has no mask token unless its config sets use_mask_token=True
    _optional_in_exported_encoders = (r"^data2vec_vision\.embeddings\.mask_token$",)

    def __init__(self, config: Data2VecVisionPreTrainingConfig):
        super().__init__(config)
        if not config.use_mask_token:
            raise ValueError("data2vec vision pretraining needs use_mask_token=True")
        self.data2vec_vision = Data2VecVisionModel(config.to_backbone_config(), add_pooling_layer=False)
        self.final_proj = nn.Linear(config.hidden_size, config.hidden_size)
        self._build_teacher()
        self.post_init()
        self.reset_teacher()

    def teacher_source(self) -> nn.Module:
        return self.data2vec_vision

    def sample_mask(self, batch_size: int, generator=None) -> torch.Tensor:
        return block_mask_sampler(self.config)(batch_size, generator).to(self.device)

    def forward(self, pixel_values: torch.Tensor, bool_masked_pos: torch.Tensor | None = None, **kwargs):
        """``pixel_values`` (B x C x H x W) and optional patch-level boolean ``bool_masked_pos``."""
        backbone = self.data2vec_vision
        if bool_masked_pos is None:
            bool_masked_pos = self.sample_mask(pixel_values.shape[0])
        mask = bool_masked_pos.to(device=pixel_values.device, dtype=torch.bool).flatten(1)

        encoded = backbone(pixel_values, bool_masked_pos=mask).last_hidden_state
        prediction = self.final_proj(encoded[:, 1:][mask])

        layers = self.teacher.model.encoder.layer  # the teacher's own (averaged) blocks
        if self.config.end_of_block_targets:
            modules, transform = list(layers), None
        else:
            modules = [layer.output for layer in layers]

            def transform(index, output):
                # BEiT's layer scale multiplies the FFN output before the residual; read inside the hook
                # so the teacher's own (averaged) lambda_2 is used.
                scale = layers[index].lambda_2
                return output if scale is None else output * scale

        with record_outputs(modules, transform) as layer_outputs:
            self.teacher.run(backbone, pixel_values)
        target = self._targets([y[:, 1:] for y in layer_outputs])[mask]
        return self._objective(prediction, target, mask, encoded)


class Data2VecVisionPreTrainingBackbone(Data2VecVisionModel):
    """The student encoder of a pretraining checkpoint, for ``AutoModel.from_pretrained`` on it."""

    config_class = Data2VecVisionPreTrainingConfig
    _keys_to_ignore_on_load_unexpected = [r"^teacher\.", r"^final_proj\.", r"relative_position_index"]
