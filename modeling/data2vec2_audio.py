"""data2vec 2.0 audio: config, encoder, pretraining model and downstream heads."""

from __future__ import annotations

import math

import torch
from huggingface_hub.dataclasses import strict
from torch import nn
from transformers import PreTrainedConfig
from transformers.modeling_outputs import CausalLMOutput, SequenceClassifierOutput
from transformers.models.data2vec.modeling_data2vec_audio import (
    Data2VecAudioFeatureEncoder,
    Data2VecAudioPositionalConvEmbedding,
)

from .data2vec2 import (
    DATA2VEC2_DOC,
    Data2Vec2Backbone,
    Data2Vec2ConfigMixin,
    Data2Vec2PreTrainedModel,
    Data2Vec2PreTrainingMixin,
    Decoder,
    classification_loss,
    mark_init,
    sample_clone_masks,
)
from .data2vec_audio import num_frames
from .objective import OBJECTIVE_DOC


@strict
class Data2Vec2AudioConfig(PreTrainedConfig, Data2Vec2ConfigMixin):
    __doc__ = (
        """Configuration of the data2vec 2.0 audio models. Defaults: fairseq's
    ``examples/data2vec/config/v2/base_audio_only_task.yaml``.

    Audio fields:

        conv_dim / conv_kernel / conv_stride (`tuple[int]`), conv_bias (`bool`), feat_extract_activation (`str`):
            the CNN feature encoder (``feature_encoder_spec``; LayerNorm mode).
        num_conv_pos_embeddings (`int`), conv_pos_kernel_size (`int`), num_conv_pos_embedding_groups (`int`):
            the convolutional relative positional encoder (``conv_pos_depth``, ``conv_pos_width // depth``,
            ``conv_pos_groups``).
        use_alibi (`bool`), alibi_scale_init (`float`), learned_alibi_scale (`bool`): ALiBi attention bias with a
            learned per-head scale.
        vocab_size (`int`), ctc_loss_reduction (`str`), ctc_zero_infinity (`bool`), final_dropout (`float`),
        classifier_proj_size (`int`): the CTC and classification heads.
"""
        + DATA2VEC2_DOC
        + OBJECTIVE_DOC
    )

    model_type = "data2vec2-audio"

    conv_dim: list[int] | tuple[int, ...] = (512, 512, 512, 512, 512, 512, 512)
    conv_kernel: list[int] | tuple[int, ...] = (10, 3, 3, 3, 3, 2, 2)
    conv_stride: list[int] | tuple[int, ...] = (5, 2, 2, 2, 2, 2, 2)
    conv_bias: bool = False
    feat_extract_activation: str = "gelu"
    num_conv_pos_embeddings: int = 5
    conv_pos_kernel_size: int = 19
    num_conv_pos_embedding_groups: int = 16
    use_alibi: bool = True
    alibi_scale_init: float = 1.0
    learned_alibi_scale: bool = True
    # heads
    vocab_size: int = 32
    pad_token_id: int | None = 0
    ctc_loss_reduction: str = "sum"
    ctc_zero_infinity: bool = False
    final_dropout: float | int = 0.1
    classifier_proj_size: int = 256
    # objective (base_audio_only_task.yaml)
    layerdrop: float | int = 0.05
    prenet_dropout: float | int = 0.1
    prenet_layerdrop: float | int = 0.05
    average_top_k_layers: int = 8
    instance_norm_target_layer: bool = True
    ema_decay: float = 0.999
    ema_end_decay: float = 0.99999
    ema_anneal_end_step: int = 75000
    clone_batch: int = 8
    mask_prob: float = 0.5
    mask_length: int = 5
    mask_prob_adjust: float | int = 0.05

    def __post_init__(self, **kwargs):
        self.num_feat_extract_layers = len(self.conv_dim)
        super().__post_init__(**kwargs)

    @property
    def inputs_to_logits_ratio(self) -> int:
        """Input samples per output frame (the ASR pipeline's chunking needs it)."""
        return math.prod(self.conv_stride)


class Data2Vec2AudioModel(Data2Vec2Backbone):
    """data2vec 2.0 speech encoder: CNN features → LayerNorm + projection → conv positions (+ ALiBi) →
    context LayerNorm (+ prenet) → post-LN blocks."""

    base_model_prefix = "data2vec2_audio"
    config_class = Data2Vec2AudioConfig
    main_input_name = "input_values"
    local_modules = ("feature_extractor", "feature_projection")

    def __init__(self, config: Data2Vec2AudioConfig):
        super().__init__(config)
        # transformers' data2vec CNN and positional convolution are exactly fairseq's (LayerNorm mode)
        self.feature_extractor = Data2VecAudioFeatureEncoder(config)
        self.feature_projection = nn.Sequential(
            nn.LayerNorm(config.conv_dim[-1], eps=1e-5), nn.Linear(config.conv_dim[-1], config.hidden_size)
        )
        self.relative_positions = Data2VecAudioPositionalConvEmbedding(config)
        # fairseq keeps PyTorch's init for these (project_features is reset after init_bert_params)
        mark_init([*self.relative_positions.modules(), *self.feature_projection.modules()], "default")
        if config.use_alibi:
            scale = torch.full((config.num_attention_heads,), float(config.alibi_scale_init))
            self.alibi_scale = nn.Parameter(scale, requires_grad=config.learned_alibi_scale)
        self._build_shared(config)
        self.post_init()

    def forward(
        self,
        input_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        local_features: torch.Tensor | None = None,
        output_hidden_states: bool = False,
        return_dict: bool = True,
        **kwargs,
    ):
        return self.encode(
            {"input_values": input_values}, attention_mask, local_features, output_hidden_states, return_dict
        )

    def local_features(self, input_values, attention_mask=None):
        features = self.feature_extractor(input_values).transpose(1, 2)
        padding_mask = None
        if attention_mask is not None:
            frames = num_frames(self.config, attention_mask.sum(-1))
            padding_mask = torch.arange(features.shape[1], device=features.device)[None, :] >= frames[:, None]
        return self.feature_projection(features), padding_mask

    def freeze_feature_encoder(self):
        self.feature_extractor._freeze_parameters()


def sample_audio_masks_v2(config, batch: dict, generators: list) -> dict:
    """Per-example clone masks (real frames only when the batch is padded); returns the forward argument
    ``mask_time_indices``."""
    length = int(num_frames(config, torch.tensor(batch["input_values"].shape[-1])))
    attention_mask = batch.get("attention_mask")
    padding = [None] * len(generators)
    if attention_mask is not None:
        frames = num_frames(config, attention_mask.sum(-1))
        padding = list(torch.arange(length)[None, :] >= frames[:, None])
    return {"mask_time_indices": sample_clone_masks(config, (length,), padding, generators)}


class Data2Vec2AudioForPreTraining(Data2Vec2PreTrainingMixin, Data2Vec2PreTrainedModel):
    """data2vec 2.0 audio pretraining (student encoder + 1-D conv decoder + EMA teacher)."""

    config_class = Data2Vec2AudioConfig
    base_model_prefix = "data2vec2_audio"
    main_input_name = "input_values"

    def __init__(self, config: Data2Vec2AudioConfig):
        super().__init__(config)
        self._setup(Data2Vec2AudioModel(config), Decoder(config, dims=1))

    def forward(self, input_values, attention_mask=None, mask_time_indices=None, **kwargs):
        """``mask_time_indices``: (B * clone_batch) x frames booleans with equal counts per row."""
        return self.pretraining_step({"input_values": input_values}, attention_mask, mask_time_indices)


class Data2Vec2AudioForCTC(Data2Vec2PreTrainedModel):
    """data2vec 2.0 encoder with a linear CTC head (``lm_head``), like ``Data2VecAudioForCTC``."""

    config_class = Data2Vec2AudioConfig
    base_model_prefix = "data2vec2_audio"
    main_input_name = "input_values"

    def __init__(self, config):
        super().__init__(config)
        self.data2vec2_audio = Data2Vec2AudioModel(config)
        self.dropout = nn.Dropout(config.final_dropout)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size)
        self.post_init()

    def freeze_feature_encoder(self):
        self.data2vec2_audio.freeze_feature_encoder()

    def forward(self, input_values, attention_mask=None, labels=None, output_hidden_states=False, **kwargs):
        out = self.data2vec2_audio(
            input_values=input_values,
            attention_mask=attention_mask,
            output_hidden_states=output_hidden_states,
        )
        logits = self.lm_head(self.dropout(out.last_hidden_state))
        loss = None
        if labels is not None:
            if labels.max() >= self.config.vocab_size:
                raise ValueError(f"label values must be < vocab_size ({self.config.vocab_size})")
            samples = (
                attention_mask.sum(-1)
                if attention_mask is not None
                else torch.full((len(input_values),), input_values.shape[-1])
            )
            input_lengths = num_frames(self.config, samples.to(logits.device))
            valid = labels >= 0
            log_probs = nn.functional.log_softmax(logits, dim=-1, dtype=torch.float32).transpose(0, 1)
            with torch.backends.cudnn.flags(enabled=False):
                loss = nn.functional.ctc_loss(
                    log_probs,
                    labels.masked_select(valid),
                    input_lengths,
                    valid.sum(-1),
                    blank=self.config.pad_token_id,
                    reduction=self.config.ctc_loss_reduction,
                    zero_infinity=self.config.ctc_zero_infinity,
                )
        return CausalLMOutput(loss=loss, logits=logits, hidden_states=out.hidden_states)


class Data2Vec2AudioForSequenceClassification(Data2Vec2PreTrainedModel):
    """data2vec 2.0 encoder, mean pooling over real frames, projector and classifier."""

    config_class = Data2Vec2AudioConfig
    base_model_prefix = "data2vec2_audio"
    main_input_name = "input_values"

    def __init__(self, config):
        super().__init__(config)
        self.data2vec2_audio = Data2Vec2AudioModel(config)
        self.projector = nn.Linear(config.hidden_size, config.classifier_proj_size)
        self.classifier = nn.Linear(config.classifier_proj_size, config.num_labels)
        self.post_init()

    def freeze_feature_encoder(self):
        self.data2vec2_audio.freeze_feature_encoder()

    def forward(self, input_values, attention_mask=None, labels=None, output_hidden_states=False, **kwargs):
        out = self.data2vec2_audio(
            input_values=input_values,
            attention_mask=attention_mask,
            output_hidden_states=output_hidden_states,
        )
        hidden = self.projector(out.last_hidden_state)
        if attention_mask is None:
            pooled = hidden.mean(1)
        else:
            frames = num_frames(self.config, attention_mask.sum(-1))
            real = (torch.arange(hidden.shape[1], device=hidden.device)[None, :] < frames[:, None]).unsqueeze(
                -1
            )
            pooled = (hidden * real).sum(1) / real.sum(1).clamp(min=1)
        logits = self.classifier(pooled)
        loss = None if labels is None else classification_loss(logits, labels, self.config.num_labels)
        return SequenceClassifierOutput(loss=loss, logits=logits, hidden_states=out.hidden_states)
