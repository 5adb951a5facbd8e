"""data2vec 2.0 vision: config, encoder, pretraining model and image classification head."""

from __future__ import annotations

import numpy as np
import torch
from huggingface_hub.dataclasses import strict
from torch import nn
from transformers import PreTrainedConfig
from transformers.modeling_outputs import ImageClassifierOutput

from .data2vec2_config import DATA2VEC2_DOC, Data2Vec2ConfigMixin
from .data2vec2_encoder import Data2Vec2Backbone, Data2Vec2PreTrainedModel, classification_loss, mark_init
from .data2vec2_pretraining import Data2Vec2PreTrainingMixin, Decoder, sample_clone_masks
from .objective import OBJECTIVE_DOC


@strict
class Data2Vec2VisionConfig(PreTrainedConfig, Data2Vec2ConfigMixin):
    __doc__ = (
        """Configuration of the data2vec 2.0 vision models. Defaults: fairseq's
    ``examples/data2vec/config/v2/base_images_only_task.yaml``.

    Vision fields:

        image_size (`int`), patch_size (`int`), num_channels (`int`): the patch embedding (square images).
        classifier_dropout (`float`): dropout before the classification head.
"""
        + DATA2VEC2_DOC
        + OBJECTIVE_DOC
    )

    model_type = "data2vec2-vision"

    image_size: int = 224
    patch_size: int = 16
    num_channels: int = 3
    classifier_dropout: float | int = 0.0
    layer_norm_eps: float = 1e-6
    num_hidden_layers: int = 10
    hidden_dropout: float | int = 0.0
    attention_dropout: float | int = 0.0
    post_mlp_dropout: float | int = 0.0
    prenet_depth: int = 2
    num_extra_tokens: int = 1
    # objective (base_images_only_task.yaml)
    average_top_k_layers: int = 10
    instance_norm_target_layer: bool = True
    layer_norm_targets: bool = True
    ema_decay: float = 0.9998
    ema_end_decay: float = 0.99999
    ema_anneal_end_step: int = 100000
    min_target_var: float = 0.0
    min_pred_var: float = 0.0
    clone_batch: int = 16
    mask_prob: float = 0.8
    mask_length: int = 3
    inverse_mask: bool = True
    mask_prob_adjust: float | int = 0.07
    decoder_dim: int = 768
    decoder_kernel: int = 3
    decoder_layers: int = 6
    decoder_input_dropout: float | int = 0.0
    cls_loss: float | int = 0.01
    init_extra_token_zero: bool = False
    ema_local_encoder: bool = True

    @property
    def grid_size(self) -> int:
        return self.image_size // self.patch_size


def sincos_positions_2d(dim: int, grid: int) -> torch.Tensor:
    """MAE's fixed 2-D sin-cos position table (grid*grid x dim): half the channels encode the row, half
    the column, each as sin/cos of ``pos / 10000^(2i/(d/2))``."""

    def one_axis(d, positions):
        omega = 1.0 / 10000 ** (np.arange(d // 2, dtype=np.float64) / (d / 2.0))
        angles = np.einsum("m,d->md", positions.reshape(-1), omega)
        return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)

    rows, cols = np.meshgrid(np.arange(grid, dtype=np.float32), np.arange(grid, dtype=np.float32))
    table = np.concatenate([one_axis(dim // 2, rows), one_axis(dim // 2, cols)], axis=1)
    return torch.from_numpy(table).float()


class Data2Vec2VisionModel(Data2Vec2Backbone):
    """data2vec 2.0 image encoder: patch embedding + fixed 2-D sin-cos positions → CLS token →
    LayerNorm + prenet blocks → post-LN blocks. ``last_hidden_state`` keeps the CLS token first."""

    base_model_prefix = "data2vec2_vision"
    config_class = Data2Vec2VisionConfig
    main_input_name = "pixel_values"
    local_modules = ("patch_embedding",)

    def __init__(self, config: Data2Vec2VisionConfig):
        super().__init__(config)
        self.patch_embedding = nn.Conv2d(
            config.num_channels, config.hidden_size, config.patch_size, stride=config.patch_size
        )
        mark_init([self.patch_embedding], "xavier")  # MAE's patch embedding init, as fairseq
        self.register_buffer(
            "fixed_positions", torch.empty(1, config.grid_size**2, config.hidden_size), persistent=False
        )
        self.reset_constant_buffers()
        self._build_shared(config)
        self.post_init()

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        local_features: torch.Tensor | None = None,
        output_hidden_states: bool = False,
        return_dict: bool = True,
        **kwargs,
    ):
        return self.encode(
            {"pixel_values": pixel_values}, attention_mask, local_features, output_hidden_states, return_dict
        )

    @torch.no_grad()
    def reset_constant_buffers(self) -> None:
        if self.fixed_positions.device.type != "meta":
            table = sincos_positions_2d(self.config.hidden_size, self.config.grid_size)
            self.fixed_positions.copy_(table.unsqueeze(0))

    def local_features(self, pixel_values, attention_mask=None):
        expected = (self.config.image_size, self.config.image_size)
        if tuple(pixel_values.shape[-2:]) != expected:
            raise ValueError(
                f"expected {expected[0]}x{expected[1]} images, got {tuple(pixel_values.shape[-2:])}"
            )
        return self.patch_embedding(pixel_values).flatten(2).transpose(1, 2), None


def sample_vision_masks_v2(config, batch: dict, generators: list) -> dict:
    """Per-example clone masks; returns the forward argument ``bool_masked_pos``."""
    grid = (config.grid_size, config.grid_size)
    return {"bool_masked_pos": sample_clone_masks(config, grid, [None] * len(generators), generators)}


class Data2Vec2VisionForPreTraining(Data2Vec2PreTrainingMixin, Data2Vec2PreTrainedModel):
    """data2vec 2.0 image pretraining (student + 2-D conv decoder + CLS loss + EMA teacher)."""

    config_class = Data2Vec2VisionConfig
    base_model_prefix = "data2vec2_vision"
    main_input_name = "pixel_values"

    def __init__(self, config: Data2Vec2VisionConfig):
        super().__init__(config)
        if config.cls_loss > 0 and config.num_extra_tokens < 1:
            raise ValueError("cls_loss needs num_extra_tokens >= 1")
        self._setup(
            Data2Vec2VisionModel(config), Decoder(config, dims=2, grid=(config.grid_size, config.grid_size))
        )

    def sequence_grid(self, length: int) -> tuple[int, ...]:
        return (self.config.grid_size, self.config.grid_size)

    def forward(self, pixel_values, bool_masked_pos=None, **kwargs):
        """``bool_masked_pos``: (B * clone_batch) x patches booleans with equal counts per row."""
        return self.pretraining_step({"pixel_values": pixel_values}, None, bool_masked_pos)


class Data2Vec2VisionForImageClassification(Data2Vec2PreTrainedModel):
    """data2vec 2.0 encoder, mean-pooled patch tokens → LayerNorm (``fc_norm``) → linear ``classifier``
    (fairseq's data2vec image classification head)."""

    config_class = Data2Vec2VisionConfig
    base_model_prefix = "data2vec2_vision"
    main_input_name = "pixel_values"

    def __init__(self, config):
        super().__init__(config)
        self.data2vec2_vision = Data2Vec2VisionModel(config)
        self.fc_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.classifier_dropout)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(self, pixel_values, labels=None, output_hidden_states=False, **kwargs):
        out = self.data2vec2_vision(pixel_values=pixel_values, output_hidden_states=output_hidden_states)
        pooled = self.fc_norm(out.last_hidden_state[:, self.config.num_extra_tokens :].mean(1))
        logits = self.classifier(self.dropout(pooled))
        loss = None if labels is None else classification_loss(logits, labels, self.config)
        return ImageClassifierOutput(loss=loss, logits=logits, hidden_states=out.hidden_states)
