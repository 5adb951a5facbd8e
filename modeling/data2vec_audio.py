"""data2vec 1.0 audio: pretraining config and model on transformers' ``Data2VecAudioModel``."""

from __future__ import annotations

import torch
from huggingface_hub.dataclasses import strict
from torch import nn
from transformers import Data2VecAudioConfig, Data2VecAudioModel
from transformers.models.data2vec.modeling_data2vec_audio import Data2VecAudioPreTrainedModel

from .layout import use_contiguous_conv_layers
from .masking import compute_span_mask, trim_to_same_count
from .objective import OBJECTIVE_DOC, Data2VecBackboneConfigMixin, Data2VecPreTrainingMixin
from .targets import record_outputs


@strict
class Data2VecAudioPreTrainingConfig(Data2VecAudioConfig, Data2VecBackboneConfigMixin):
    __doc__ = (
        """Configuration of :class:`Data2VecAudioForPreTraining`.

    All fields of ``transformers.Data2VecAudioConfig`` describe the backbone (defaults: the released
    base model). Defaults of the pretraining fields follow fairseq's
    ``examples/data2vec/config/audio/pretraining/base_librispeech.yaml``.

    Masking fields:

        mask_prob (`float`): probability of each frame starting a masked span (0.65).
        mask_length (`int`): span length in frames (10).
        mask_min_masks (`int`): minimum number of spans per sample (1).
        require_same_masks (`bool`): every row of a batch keeps only as many masked steps as the row with
            the fewest (a random subset; fairseq's ``require_same_masks``, on in the released recipe).
"""
        + OBJECTIVE_DOC
    )

    model_type = "data2vec-audio-pretraining"
    backbone_config_class = Data2VecAudioConfig
    pretraining_only_fields = ("mask_prob", "mask_length", "mask_min_masks", "require_same_masks")

    # backbone defaults of the released base pretraining run
    layerdrop: float | int = 0.05
    activation_dropout: float | int = 0.0
    # objective (fairseq base_librispeech.yaml)
    average_top_k_layers: int = 8
    instance_norm_target_layer: bool = True
    ema_decay: float = 0.999
    ema_end_decay: float = 0.9999
    ema_anneal_end_step: int = 30000
    # masking
    mask_prob: float | int = 0.65
    mask_length: int = 10
    mask_min_masks: int = 1
    require_same_masks: bool = True


def num_frames(config: Data2VecAudioConfig, num_samples: torch.Tensor) -> torch.Tensor:
    """Frames the CNN feature encoder makes of ``num_samples`` input samples."""
    for kernel, stride in zip(config.conv_kernel, config.conv_stride):
        num_samples = torch.div(num_samples - kernel, stride, rounding_mode="floor") + 1
    return num_samples


def sample_audio_masks(config, batch: dict, generators: list[torch.Generator]) -> dict:
    """Per-example span masks for a padded batch (``input_values``, optional ``attention_mask``), each
    drawn from its own generator; returns the forward argument ``mask_time_indices``."""
    input_values = batch["input_values"]
    total = num_frames(config, torch.tensor(input_values.shape[-1])).item()
    lengths = batch.get("attention_mask")
    lengths = (
        lengths.sum(-1) if lengths is not None else torch.full((len(input_values),), input_values.shape[-1])
    )
    frames = num_frames(config, lengths)
    rows = [
        compute_span_mask(
            (1, total),
            config.mask_prob,
            config.mask_length,
            attention_mask=(torch.arange(total) < n).unsqueeze(0),
            min_masks=config.mask_min_masks,
            generator=g,
        )
        for n, g in zip(frames.tolist(), generators)
    ]
    mask = torch.cat(rows)
    if config.require_same_masks:
        mask = trim_to_same_count(mask, generators)
    return {"mask_time_indices": mask}


def encode_without_padding_leaks(
    encoder, hidden: torch.Tensor, frame_mask: torch.Tensor | None, output_hidden_states: bool = False
):
    """transformers' ``Data2VecAudioEncoder`` forward, except that with padding (``frame_mask``, 1 = real)
    padded steps are zeroed before *every* positional convolution layer. transformers (and fairseq)
    zero them only before the first, so the later layers read padding and a clip's features depend on
    the batch it is padded in; fairseq's pretraining never pads, and without padding both are the same.

    Returns the last hidden state, or with ``output_hidden_states`` the tuple transformers returns
    (the normalised block input, then every block's output)."""
    if frame_mask is None:
        out = encoder(hidden, output_hidden_states=output_hidden_states)
        return out.hidden_states if output_hidden_states else out.last_hidden_state
    from transformers.masking_utils import create_bidirectional_mask

    from .data2vec2_encoder import conv_positions

    frame_mask = frame_mask.bool()
    hidden = hidden * frame_mask.unsqueeze(-1).to(hidden.dtype)
    positions = conv_positions(encoder.pos_conv_embed, hidden, ~frame_mask)
    hidden = encoder.dropout(encoder.layer_norm(hidden + positions))
    attention_mask = create_bidirectional_mask(
        config=encoder.config, inputs_embeds=hidden, attention_mask=frame_mask
    )
    states = [hidden]
    for layer in encoder.layers:
        if encoder.training and encoder.config.layerdrop > 0.0 and torch.rand([]) < encoder.config.layerdrop:
            continue
        hidden = layer(hidden, attention_mask=attention_mask)
        states.append(hidden)
    return tuple(states) if output_hidden_states else hidden


def backbone_hidden_states(backbone, input_values: torch.Tensor, attention_mask: torch.Tensor | None):
    """Every hidden state of a ``Data2VecAudioModel`` (as ``output_hidden_states=True`` returns them),
    computed so that a clip's states do not depend on the padding beside it (see
    :func:`encode_without_padding_leaks`)."""
    features = backbone.feature_extractor(input_values).transpose(1, 2)
    frame_mask = None
    if attention_mask is not None:
        frame_mask = backbone._get_feature_vector_attention_mask(features.shape[1], attention_mask)
    hidden, _ = backbone.feature_projection(features)
    return encode_without_padding_leaks(backbone.encoder, hidden, frame_mask, output_hidden_states=True)


class Data2VecAudioForPreTraining(Data2VecPreTrainingMixin, Data2VecAudioPreTrainedModel):
    """data2vec 1.0 audio pretraining: a ``Data2VecAudioModel`` student, a linear regression head
    (``final_proj``) and an EMA teacher of the transformer encoder.

    As in fairseq, the teacher shares the CNN feature encoder, feature projection, mask embedding and
    positional convolution with the student: it reads the student's features of the unmasked input.
    """

    config_class = Data2VecAudioPreTrainingConfig
    teacher_shared = ("pos_conv_embed",)
    _keys_to_ignore_on_load_unexpected = [r"^lm_head\.", r"^projector\.", r"^classifier\."]
    # transformers' Data2VecAudioModel has no mask embedding when its SpecAugment is off
    _optional_in_exported_encoders = (r"^data2vec_audio\.masked_spec_embed$",)

    def __init__(self, config: Data2VecAudioPreTrainingConfig):
        super().__init__(config)
        self.data2vec_audio = use_contiguous_conv_layers(Data2VecAudioModel(config.to_backbone_config()))
        if not hasattr(self.data2vec_audio, "masked_spec_embed"):
            # transformers only creates the mask embedding when its own SpecAugment is enabled
            self.data2vec_audio.masked_spec_embed = nn.Parameter(torch.empty(config.hidden_size).uniform_())
        self.final_proj = nn.Linear(config.hidden_size, config.hidden_size)
        self._build_teacher()
        self.post_init()
        self.reset_teacher()

    def teacher_source(self) -> nn.Module:
        return self.data2vec_audio.encoder

    def sample_mask(self, batch_size: int, num_frames: int, frame_mask=None, generator=None):
        cfg = self.config
        mask = compute_span_mask(
            (batch_size, num_frames),
            cfg.mask_prob,
            cfg.mask_length,
            attention_mask=frame_mask,
            min_masks=cfg.mask_min_masks,
            generator=generator,
        )
        if cfg.require_same_masks:
            mask = trim_to_same_count(mask, [generator] * batch_size)
        return mask.to(self.device)

    def forward(
        self,
        input_values: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        mask_time_indices: torch.Tensor | None = None,
        **kwargs,
    ):
        """``input_values`` (B x samples), optional ``attention_mask`` (1 = real sample) and optional
        frame-level boolean ``mask_time_indices`` (sampled from the config when absent)."""
        backbone = self.data2vec_audio
        features = backbone.feature_extractor(input_values).transpose(1, 2)
        frame_mask = None
        if attention_mask is not None:
            frame_mask = backbone._get_feature_vector_attention_mask(features.shape[1], attention_mask)
        hidden, _ = backbone.feature_projection(features)
        batch_size, num_frames, _ = hidden.shape
        if mask_time_indices is None:
            mask_time_indices = self.sample_mask(batch_size, num_frames, frame_mask)
        mask = mask_time_indices.to(device=hidden.device, dtype=torch.bool)
        if mask.shape != (batch_size, num_frames):
            raise ValueError(
                f"mask_time_indices has shape {tuple(mask.shape)}, expected {(batch_size, num_frames)}"
            )

        student_input = torch.where(mask.unsqueeze(-1), backbone.masked_spec_embed.to(hidden.dtype), hidden)
        encoded = encode_without_padding_leaks(backbone.encoder, student_input, frame_mask)
        prediction = self.final_proj(encoded[mask])

        teacher = self.teacher.model  # the averaged copy of the encoder (positional conv lent by the student)
        with record_outputs([layer.feed_forward for layer in teacher.layers]) as ffn_outputs:
            self.teacher.run(
                backbone.encoder, hidden.detach().clone(), frame_mask, call=encode_without_padding_leaks
            )
        padding_mask = None if frame_mask is None else ~frame_mask.bool()
        target = self._targets(ffn_outputs, padding_mask)[mask]
        return self._objective(prediction, target, mask, encoded)


class Data2VecAudioPreTrainingBackbone(Data2VecAudioModel):
    """The student encoder of a pretraining checkpoint, for ``AutoModel.from_pretrained`` on it."""

    config_class = Data2VecAudioPreTrainingConfig
    _keys_to_ignore_on_load_unexpected = [r"^teacher\.", r"^final_proj\."]
