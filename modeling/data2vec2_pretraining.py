"""data2vec 2.0 pretraining: the student-teacher step shared by the audio, vision and text models.

:class:`Data2Vec2PreTrainingMixin` makes M masked clones of each sample after the local encoder
(:func:`sample_clone_masks`), runs the student encoder on the kept positions only, the light
convolutional :class:`Decoder` on all positions (masked ones re-enter as noise, in their original
order) and the EMA teacher once per sample, whose FFN outputs give the regression targets.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .data2vec2_encoder import Data2Vec2Backbone, MaskInfo, gather_positions, mark_init, run_blocks
from .dropout import apply_dropout
from .layout import conv_time_major, transpose_contiguous
from .objective import Data2VecPreTrainingMixin, Data2VecPreTrainingOutput
from .targets import record_outputs


def sample_clone_masks(config, grid: tuple[int, ...], padding: list, generators: list) -> torch.Tensor:
    """``clone_batch`` masks per sample (rows clone-major), each sample drawing from its own generator.

    Block masking (``mask_length`` > 1) or, for text, MAE-style random masking, with the same number of
    masked positions in every row. ``padding`` holds one padding mask (or None) per sample. A padded
    1-D row is block-masked over its real steps only and its padding is masked too (dropped from the
    student, never regressed); rows are then brought to one count by un-masking padding.
    """
    from .masking import block_mask, random_token_mask

    rows, row_padding, row_generators = [], [], []
    for pad, generator in zip(padding, generators):
        padded = pad is not None and len(grid) == 1 and bool(pad.any())
        for _ in range(config.clone_batch):
            if config.mask_length <= 1 and len(grid) == 1:
                row = random_token_mask(grid[0], config.mask_prob, pad, generator)
            elif padded:
                real = int((~pad).sum())
                row = torch.ones(grid[0], dtype=torch.bool)
                row[:real] = block_mask((real,), *_block_mask_args(config), generator)
            else:
                row = block_mask(grid, *_block_mask_args(config), generator)
            rows.append(row)
            row_padding.append(pad if padded else None)
            row_generators.append(generator)
    return equalize_mask_counts(torch.stack(rows), row_padding, row_generators)


def _block_mask_args(config) -> tuple:
    return config.mask_prob, config.mask_length, config.inverse_mask, config.mask_prob_adjust


def equalize_mask_counts(mask: torch.Tensor, padding: list, generators: list) -> torch.Tensor:
    """Give every row as many masked positions as the row with the fewest: un-mask padding first (it
    stays out of attention and the loss either way), then, only if that is not enough, random masked
    real positions."""
    counts = mask.sum(-1)
    target = int(counts.min())
    if bool((counts == target).all()):
        return mask
    mask = mask.clone()
    for row, (pad, generator) in enumerate(zip(padding, generators)):
        excess = int(mask[row].sum()) - target
        if excess > 0 and pad is not None:
            masked_padding = (mask[row] & pad).nonzero().squeeze(-1)
            mask[row, masked_padding[:excess]] = False
            excess -= min(excess, len(masked_padding))
        if excess > 0:
            masked = mask[row].nonzero().squeeze(-1)
            mask[row, masked[torch.randperm(len(masked), generator=generator)[:excess]]] = False
    return mask


class Decoder(nn.Module):
    """The 2.0 decoder: ``decoder_layers`` x (grouped conv → LayerNorm without affine → GELU, residual when
    shapes allow), then a linear (or small MLP) projection back to ``hidden_size``. 1-D or 2-D convs."""

    def __init__(self, config, dims: int, grid: tuple[int, int] | None = None):
        super().__init__()
        conv = nn.Conv1d if dims == 1 else nn.Conv2d
        k = config.decoder_kernel
        self.grid, self.residual, self.kernel = grid, config.decoder_residual, k
        self.convs = nn.ModuleList(
            conv(
                config.hidden_size if i == 0 else config.decoder_dim,
                config.decoder_dim,
                k,
                padding=k // 2,
                groups=config.decoder_groups,
            )
            for i in range(config.decoder_layers)
        )
        layers, dim = [], config.decoder_dim
        for i in range(config.decoder_projection_layers - 1):
            next_dim = int(dim * config.decoder_projection_ratio) if i == 0 else dim
            layers += [nn.Linear(dim, next_dim), nn.GELU()]
            dim = next_dim
        layers.append(nn.Linear(dim, config.hidden_size))
        self.proj = nn.Sequential(*layers)
        mark_init(self.modules(), "default")  # fairseq resets the decoder to PyTorch's init

    def forward(self, x: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """B x T x D in, B x T x hidden_size out. With ``padding_mask`` (B x T, 1-D only) padded steps are
        zeroed before every convolution, so real steps never read padding."""
        batch, length, _ = x.shape
        keep = None if padding_mask is None else (~padding_mask).unsqueeze(-1).to(x.dtype)
        residual = x
        for conv in self.convs:
            h = x if keep is None else x * keep
            if self.grid is None:  # channels-last, no transposes on the CPU (layout.py)
                x = conv_time_major(conv, h)
                x = x[:, :-1] if self.kernel % 2 == 0 else x  # "same" padding for even kernels
            else:  # the convolution runs channels-first, the rest channels-last, all contiguous
                h = conv(transpose_contiguous(h).reshape(batch, h.shape[-1], *self.grid))
                h = h[..., :-1, :-1] if self.kernel % 2 == 0 else h
                x = transpose_contiguous(h.reshape(batch, h.shape[1], length))
            x = F.gelu(F.layer_norm(x, x.shape[-1:]))
            if self.residual and residual.shape == x.shape:
                x = x + residual
            residual = x
        return self.proj(x)


@dataclass
class Data2Vec2PreTrainingOutput(Data2VecPreTrainingOutput):
    """:class:`Data2VecPreTrainingOutput` plus ``cls_loss`` (the weighted CLS-token loss included in ``loss``)."""

    cls_loss: torch.Tensor | None = None


class Data2Vec2PreTrainingMixin(Data2VecPreTrainingMixin):
    """The 2.0 pretraining step: M masked clones after the local encoder, the student on the kept
    positions only, the decoder on all positions, the teacher once per sample."""

    def _setup(self, backbone: Data2Vec2Backbone, decoder: nn.Module) -> None:
        """Attach the student encoder (under ``base_model_prefix``), the decoder and the EMA teacher."""
        setattr(self, self.base_model_prefix, backbone)
        self.decoder = decoder
        self._build_teacher()
        self.post_init()
        self.reset_teacher()

    @property
    def teacher_shared(self) -> tuple[str, ...]:
        backbone = getattr(self, self.base_model_prefix)
        if self.config.ema_encoder_only:
            return tuple(name for name, _ in backbone.named_children() if name != "blocks") + tuple(
                name for name, _ in backbone.named_parameters(recurse=False)
            )
        if self.config.ema_local_encoder:
            return ()
        return backbone.local_modules

    def teacher_source(self) -> nn.Module:
        return getattr(self, self.base_model_prefix)

    def sequence_grid(self, length: int) -> tuple[int, ...]:
        return (length,)

    def sample_mask(self, batch_size: int, length: int, padding_mask=None, generator=None) -> torch.Tensor:
        """``batch_size * clone_batch`` masks (clone-major: sample b owns rows b*M .. b*M+M-1)."""
        padding = [None] * batch_size if padding_mask is None else list(padding_mask.cpu())
        return sample_clone_masks(self.config, self.sequence_grid(length), padding, [generator] * batch_size)

    def pretraining_step(self, inputs: dict, attention_mask=None, mask=None) -> Data2Vec2PreTrainingOutput:
        cfg = self.config
        backbone = getattr(self, self.base_model_prefix)
        features, padding_mask = backbone.local_features(attention_mask=attention_mask, **inputs)
        batch, length, _ = features.shape
        clones = cfg.clone_batch
        if mask is None:
            mask = self.sample_mask(batch, length, padding_mask)
        mask = mask.to(features.device).bool().reshape(-1, length)
        if mask.shape[0] != batch * clones:
            raise ValueError(
                f"mask has {mask.shape[0]} rows; expected batch_size * clone_batch = {batch * clones}"
            )
        info = MaskInfo.from_mask(mask)

        student_features = features.repeat_interleave(clones, 0) if clones > 1 else features
        student_padding = (
            padding_mask.repeat_interleave(clones, 0)
            if padding_mask is not None and clones > 1
            else padding_mask
        )
        x, kept_padding, bias = backbone.contextualize(student_features, student_padding, info)
        x = run_blocks(backbone.blocks, x, bias, cfg.layerdrop, self.training)

        extra = cfg.num_extra_tokens
        decoder_input = apply_dropout(x[:, extra:], cfg.decoder_input_dropout, self.training)
        noise = decoder_input.new_empty(
            decoder_input.shape[0], length - decoder_input.shape[1], decoder_input.shape[2]
        ).normal_(0, cfg.mask_noise_std)
        decoded = self.decoder(
            gather_positions(torch.cat([decoder_input, noise], 1), info.ids_restore), student_padding
        )

        # targets: padded positions are never regressed
        regress = mask if student_padding is None else mask & ~student_padding
        with record_outputs([block.mlp for block in self.teacher.model.blocks]) as ffn_outputs:
            self.teacher.run(
                backbone, **self.teacher_inputs(inputs, features.detach(), attention_mask, padding_mask)
            )
        targets = self._targets([y[:, extra:] for y in ffn_outputs], padding_mask)
        repeated = targets.repeat_interleave(clones, 0) if clones > 1 else targets
        output = self._objective(decoded[regress], repeated[regress], regress, x)

        if cfg.cls_loss > 0:
            from .losses import regression_loss

            cls_target = targets.mean(dim=1)
            cls_target = cls_target.repeat_interleave(clones, 0) if clones > 1 else cls_target
            cls = regression_loss(x[:, extra - 1], cls_target, cfg.loss_beta, cfg.loss_scale).sum()
            cls = cls * cfg.cls_loss * output.num_masked
            output.loss = output.loss + cls / output.num_masked.clamp(min=1)
            output.loss_sum = output.loss_sum + cls.detach()
            return Data2Vec2PreTrainingOutput(**output, cls_loss=cls.detach())
        return Data2Vec2PreTrainingOutput(**output)

    def teacher_inputs(self, inputs, local_features, attention_mask, padding_mask) -> dict:
        """Arguments of the teacher's (full, unmasked) backbone call."""
        if self.config.ema_local_encoder:
            return dict(inputs, attention_mask=attention_mask)
        frame_mask = None if padding_mask is None else (~padding_mask).long()
        return {"local_features": local_features, "attention_mask": frame_mask}
