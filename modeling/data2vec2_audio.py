"""data2vec 2.0 audio: config, encoder, pretraining model and downstream heads."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from huggingface_hub.dataclasses import strict
from torch import nn
from transformers import PreTrainedConfig
from transformers.modeling_outputs import CausalLMOutput, SequenceClassifierOutput
from transformers.models.data2vec.modeling_data2vec_audio import (
    Data2VecAudioFeatureEncoder,
    Data2VecAudioPositionalConvEmbedding,
    _compute_mask_indices,
)
from transformers.utils import logging

from .data2vec2_config import DATA2VEC2_DOC, Data2Vec2ConfigMixin
from .data2vec2_encoder import Data2Vec2Backbone, Data2Vec2PreTrainedModel, classification_loss, mark_init
from .data2vec2_pretraining import Data2Vec2PreTrainingMixin, Decoder, sample_clone_masks
from .data2vec_audio import num_frames
from .layout import use_contiguous_conv_layers
from .objective import OBJECTIVE_DOC

logger = logging.get_logger(__name__)


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
        vocab_size (`int`), ctc_loss_reduction (`str`), ctc_zero_infinity (`bool`), final_dropout (`float`):
            the CTC head.
        classifier_proj_size (`int`): width of the classification head's per-frame projector (0: none, the
            classifier reads the encoder output). classifier_pooling (`str`): how the classification head
            pools frames — ``"mean"`` (of the projected frames, as transformers' audio heads) or
            ``"linear_softmax"`` (fairseq ``audio_classification``'s ``lin_softmax``: per-frame logits z, p =
            sigmoid(z), clip probability sum(p²) / sum(p) over real frames, returned as its logit).
        problem_type (`str`): as in transformers (regression / single- / multi-label classification).

    Fine-tuning masks (SpecAugment), with transformers' names and meaning; applied by the encoder to the
    projected CNN features in training only (the heads' fine-tuning, never in eval nor in pretraining):

        apply_spec_augment (`bool`): master switch. mask_time_prob (`float`), mask_time_length (`int`),
        mask_time_min_masks (`int`): about ``mask_time_prob * frames / mask_time_length`` spans of
            ``mask_time_length`` frames (overlaps make the masked share smaller), at least
            ``mask_time_min_masks``, over real frames; masked frames are replaced by N(0, ``mask_noise_std``)
            noise (0: zeros) — where fairseq's data2vec 2.0 fine-tuning masks them, before the positional
            convolution. fairseq's data2vec_multi has no learned mask vector (transformers'
            ``masked_spec_embed``). mask_feature_prob (`float`), mask_feature_length (`int`),
            mask_feature_min_masks (`int`): the same over channels, one draw per clip, masked channels zeroed.
        Defaults: fairseq's ``examples/wav2vec/config/finetuning/base_{10m,1h,10h,100h}.yaml``, which fine-tune
        the data2vec 2.0 base models (``mask_prob`` 0.65, ``mask_channel_length`` 64; ``mask_channel_prob``
        0.25 or 0.5 there, 0.1 in ``base_960h``: 0.25 here), with ``Wav2Vec2AsrConfig``'s ``mask_length`` 10
        and data2vec_multi's ``min_masks`` 1 (channels: 0).
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
    classifier_pooling: str = "mean"
    # fine-tuning masks (SpecAugment; see the docstring for the fairseq sources of the defaults)
    apply_spec_augment: bool = True
    mask_time_prob: float | int = 0.65
    mask_time_length: int = 10
    mask_time_min_masks: int = 1
    mask_feature_prob: float | int = 0.25
    mask_feature_length: int = 64
    mask_feature_min_masks: int = 0
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
        use_contiguous_conv_layers(self)  # same layers, a faster memory layout (see layout.py)
        self._build_shared(config)
        if config.mask_feature_prob > 0 and config.mask_feature_length > config.hidden_size:
            logger.warning_once(
                f"mask_feature_length={config.mask_feature_length} > hidden_size={config.hidden_size}: no "
                "feature (channel) masks will be drawn"
            )
        self.post_init()

    def forward(
        self,
        input_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        local_features: torch.Tensor | None = None,
        mask_time_indices: torch.Tensor | None = None,
        output_hidden_states: bool = False,
        return_dict: bool = True,
        **kwargs,
    ):
        """``mask_time_indices`` (B x frames booleans): time masks to apply instead of sampled ones (as
        transformers' ``Data2VecAudioModel``); in training the config's SpecAugment masks are sampled."""
        if local_features is None:
            local_features, padding_mask = self.local_features(input_values, attention_mask)
            local_features = self.mask_features(local_features, padding_mask, mask_time_indices)
            # from here on, attention_mask is at frame resolution (what ``encode`` expects with features)
            attention_mask = None if padding_mask is None else (~padding_mask).long()
        return self.encode({}, attention_mask, local_features, output_hidden_states, return_dict)

    def mask_features(self, features, padding_mask=None, mask_time_indices=None) -> torch.Tensor:
        """SpecAugment on the projected CNN features (B x T x D), before the positional convolution as in
        fairseq's data2vec 2.0 fine-tuning (``apply_mask`` in ``modalities/base.py``): time masks from
        transformers' ``_compute_mask_indices`` over real frames, filled with N(0, ``mask_noise_std``)
        noise; channel masks zeroed. Sampled in training only; ``mask_time_indices`` is always applied."""
        cfg = self.config
        if not cfg.apply_spec_augment:
            return features
        batch, length, dim = features.shape
        real = None if padding_mask is None else (~padding_mask).long()
        # a clip shorter than one span gets no mask (transformers' sampler would raise)
        if (
            mask_time_indices is None
            and self.training
            and cfg.mask_time_prob > 0
            and length >= cfg.mask_time_length
        ):
            mask_time_indices = torch.from_numpy(
                _compute_mask_indices(
                    (batch, length), cfg.mask_time_prob, cfg.mask_time_length, real, cfg.mask_time_min_masks
                )
            )
        if mask_time_indices is not None:
            mask = mask_time_indices.to(features.device, torch.bool).unsqueeze(-1)
            noise = torch.randn_like(features) * cfg.mask_noise_std
            features = torch.where(mask, noise, features)
        if self.training and cfg.mask_feature_prob > 0 and dim >= cfg.mask_feature_length:
            channels = _compute_mask_indices(
                (batch, dim),
                cfg.mask_feature_prob,
                cfg.mask_feature_length,
                min_masks=cfg.mask_feature_min_masks,
            )
            channels = torch.from_numpy(channels).to(features.device).unsqueeze(1)
            features = features.masked_fill(channels, 0.0)
        return features

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
    """data2vec 2.0 encoder, per-frame projector (``classifier_proj_size``; 0: none) and classifier, pooled
    over the real frames: the mean of the projected frames (``classifier_pooling="mean"``, as transformers'
    audio heads), or fairseq ``audio_classification``'s linear-softmax pooling of per-frame probabilities
    (``"linear_softmax"``, for multi-label tagging such as AudioSet). ``problem_type`` as transformers'."""

    config_class = Data2Vec2AudioConfig
    base_model_prefix = "data2vec2_audio"
    main_input_name = "input_values"

    def __init__(self, config):
        super().__init__(config)
        if config.classifier_pooling not in ("mean", "linear_softmax"):
            raise ValueError(
                f"classifier_pooling must be 'mean' or 'linear_softmax', got {config.classifier_pooling!r}"
            )
        self.data2vec2_audio = Data2Vec2AudioModel(config)
        width = config.classifier_proj_size or config.hidden_size
        self.projector = (
            nn.Linear(config.hidden_size, width) if config.classifier_proj_size else nn.Identity()
        )
        self.classifier = nn.Linear(width, config.num_labels)
        self.post_init()

    def freeze_feature_encoder(self):
        self.data2vec2_audio.freeze_feature_encoder()

    def forward(
        self, input_values, attention_mask=None, labels=None, output_hidden_states=False, **kwargs
    ) -> SequenceClassifierOutput:
        out = self.data2vec2_audio(
            input_values=input_values,
            attention_mask=attention_mask,
            output_hidden_states=output_hidden_states,
        )
        hidden = self.projector(out.last_hidden_state)
        if attention_mask is None:
            real = torch.ones(hidden.shape[:2], dtype=torch.bool, device=hidden.device)
        else:
            frames = num_frames(self.config, attention_mask.sum(-1))
            real = torch.arange(hidden.shape[1], device=hidden.device)[None, :] < frames[:, None]
        real = real.unsqueeze(-1)
        if self.config.classifier_pooling == "linear_softmax":
            logits = linear_softmax_pool(self.classifier(hidden), real)
        else:  # mean: pooling and a linear classifier commute, so the classifier reads the pooled frames
            logits = self.classifier((hidden * real).sum(1) / real.sum(1).clamp(min=1))
        loss = None if labels is None else classification_loss(logits, labels, self.config)
        return SequenceClassifierOutput(loss=loss, logits=logits, hidden_states=out.hidden_states)


def linear_softmax_pool(frame_logits: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """Linear-softmax pooling (Wang et al. 2019, fairseq ``lin_softmax``) of B x T x C per-frame logits over
    the frames where ``real`` (B x T x 1) is True: clip probability P = sum(p²) / sum(p) with p the frame
    probabilities, returned as the logit log(P / (1 - P)). Computed in log space, as fairseq does, so that
    confident frames do not saturate."""
    log_p = F.logsigmoid(frame_logits.float()).masked_fill(~real, float("-inf"))
    log_pooled = (torch.logsumexp(2 * log_p, dim=1) - torch.logsumexp(log_p, dim=1)).clamp(max=0)
    return log_pooled - torch.log(-torch.expm1(log_pooled))
