"""data2vec 2.0 encoder: the transformer every modality shares, and the base class of every 2.0 model.

After a modality's *local* encoder (CNN, patch embedding or token embedding), :class:`Data2Vec2Backbone`
runs the *contextual* stage (positional encoding, optional extra tokens, a LayerNorm and optional
"prenet" blocks) and the post-LN transformer blocks (:class:`Data2Vec2Block`), on all positions or, for
the pretraining student, only on the kept ones (:class:`MaskInfo`). :class:`Data2Vec2PreTrainedModel`
holds fairseq's initialisation and the remote-code saving options, and :func:`classification_loss` the
loss of the downstream heads. The pretraining decoder and step are in ``data2vec2_pretraining.py``.
"""

from __future__ import annotations

import math
from typing import ClassVar, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutput

from .dropout import Dropout, attention
from .layout import ContiguousPositionalConvEmbedding, transpose_contiguous
from .remote_code import package_only


class MaskInfo(NamedTuple):
    """Which positions the student drops: ``mask`` (B x T, True = masked), the kept positions in
    order (``ids_keep``, B x K) and the permutation restoring the original order (``ids_restore``)."""

    mask: torch.Tensor
    ids_keep: torch.Tensor
    ids_restore: torch.Tensor

    @classmethod
    def from_mask(cls, mask: torch.Tensor) -> MaskInfo:
        counts = mask.sum(-1)
        if not bool((counts == counts[0]).all()):
            raise ValueError(
                f"data2vec 2.0 needs the same number of masked positions per sample, got {counts.tolist()}"
            )
        ids_shuffle = mask.to(torch.uint8).argsort(dim=1, stable=True)  # kept positions first, in order
        num_keep = mask.shape[1] - int(counts[0])
        return cls(mask.bool(), ids_shuffle[:, :num_keep], ids_shuffle.argsort(dim=1))


def gather_positions(x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """``x[b, ids[b]]`` for B x T (x ...) tensors."""
    index = ids.view(*ids.shape, *([1] * (x.dim() - 2))).expand(*ids.shape, *x.shape[2:])
    return torch.gather(x, 1, index)


def alibi_slopes(num_heads: int) -> list[float]:
    """ALiBi head slopes (Press et al.), with the interleaving rule for non-powers of two."""

    def power_of_2(n):
        start = 2 ** (-(2 ** -(math.log2(n) - 3)))
        return [start * start**i for i in range(n)]

    if math.log2(num_heads).is_integer():
        return power_of_2(num_heads)
    closest = 2 ** math.floor(math.log2(num_heads))
    return power_of_2(closest) + alibi_slopes(2 * closest)[0::2][: num_heads - closest]


def alibi_bias_1d(num_heads: int, length: int, device=None) -> torch.Tensor:
    """H x T x T symmetric linear distance bias, ``-slope * |i - j|``."""
    positions = torch.arange(length, device=device)
    distance = -(positions[None, :] - positions[:, None]).abs().float()
    return torch.tensor(alibi_slopes(num_heads), device=device)[:, None, None] * distance


def conv_positions(relative: nn.Module, x: torch.Tensor, padding_mask: torch.Tensor | None = None):
    """Run a convolutional positional encoder (``relative.layers``) on B x T x D. Padded steps are
    zeroed before every layer, so that real steps never see how much padding follows them (fairseq
    lets the convolution read padding, which makes a sample's features depend on the batch it is
    padded in; its pretraining never pads, and without padding the two are the same)."""
    if padding_mask is None or not hasattr(relative, "layers"):
        return relative(x)
    if isinstance(relative, ContiguousPositionalConvEmbedding):
        return relative(x, keep=(~padding_mask).unsqueeze(-1).to(x.dtype))
    keep = (~padding_mask).unsqueeze(1).to(x.dtype)
    h = transpose_contiguous(x) * keep
    for layer in relative.layers:
        h = layer(h) * keep
    return transpose_contiguous(h)


def dropout(p: float) -> nn.Module:
    """A dropout module (cheaper masks on the CPU: dropout.py), or nothing for p = 0 (a zero-probability
    dropout still copies in training)."""
    return Dropout(p) if p > 0 else nn.Identity()


def classification_loss(logits: torch.Tensor, labels: torch.Tensor, config) -> torch.Tensor:
    """The loss of a classification head, chosen by ``config.problem_type`` as transformers' heads do:
    mean squared error for ``regression``, cross-entropy for ``single_label_classification``, binary
    cross-entropy on the logits for ``multi_label_classification`` (labels: B x num_labels, 0/1 or soft).
    When ``problem_type`` is unset it is inferred — one label: regression; integer labels: single-label;
    otherwise multi-label — and stored in the config, so a saved checkpoint records it."""
    num_labels = config.num_labels
    if config.problem_type is None:
        if num_labels == 1:
            config.problem_type = "regression"
        elif labels.dtype in (torch.long, torch.int):
            config.problem_type = "single_label_classification"
        else:
            config.problem_type = "multi_label_classification"
    if config.problem_type == "regression":
        if num_labels == 1:
            return F.mse_loss(logits.squeeze(-1), labels.squeeze(-1).to(logits.dtype))
        return F.mse_loss(logits, labels.to(logits.dtype))
    if config.problem_type == "single_label_classification":
        return F.cross_entropy(logits.view(-1, num_labels), labels.view(-1))
    if config.problem_type == "multi_label_classification":
        return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))
    raise ValueError(f"unknown problem_type {config.problem_type!r}")


class Data2Vec2Attention(nn.Module):
    """Multi-head self-attention with a fused ``qkv`` projection, through ``scaled_dot_product_attention``."""

    def __init__(self, config):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.qkv = nn.Linear(config.hidden_size, 3 * config.hidden_size)
        self.proj = nn.Linear(config.hidden_size, config.hidden_size)
        self.attention_dropout = config.attention_dropout
        self.proj_dropout = dropout(config.hidden_dropout)

    def forward(self, x, attention_bias: torch.Tensor | None = None):
        batch, length, dim = x.shape
        q, k, v = (
            self.qkv(x).view(batch, length, 3, self.num_heads, dim // self.num_heads).permute(2, 0, 3, 1, 4)
        )
        out = attention(q, k, v, attention_bias, self.attention_dropout, self.training)
        return self.proj_dropout(self.proj(out.transpose(1, 2).reshape(batch, length, dim)))


class Data2Vec2FeedForward(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size)
        self.dropout = dropout(config.activation_dropout)

    def forward(self, x):
        return self.dropout(self.fc2(self.dropout(F.gelu(self.fc1(x)))))


class Data2Vec2Block(GradientCheckpointingLayer):
    """Post-LN transformer block (fairseq ``AltBlock`` with ``layer_norm_first=False``).

    Its FFN output before the residual connection (``mlp``'s output) is what the teacher's targets use.
    """

    def __init__(self, config, drop_path: float = 0.0):
        super().__init__()
        self.attn = Data2Vec2Attention(config)
        self.norm1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = Data2Vec2FeedForward(config)
        self.norm2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.post_mlp_dropout = dropout(config.post_mlp_dropout)
        self.drop_path = drop_path

    def _drop_path(self, x):
        if not self.training or self.drop_path == 0.0:
            return x
        keep = torch.empty(x.shape[0], *([1] * (x.dim() - 1)), device=x.device).bernoulli_(1 - self.drop_path)
        return x * keep / (1 - self.drop_path)

    def forward(self, x, attention_bias: torch.Tensor | None = None):
        x = self.norm1(x + self._drop_path(self.attn(x, attention_bias)))
        return self.norm2(x + self._drop_path(self.post_mlp_dropout(self.mlp(x))))


def run_blocks(
    blocks, x, attention_bias, layerdrop: float, training: bool, hidden_states: list | None = None
):
    for block in blocks:
        if training and layerdrop > 0 and torch.rand(()) < layerdrop:
            continue
        x = block(x, attention_bias)
        if hidden_states is not None:
            hidden_states.append(x)
    return x


class Data2Vec2PreTrainedModel(PreTrainedModel):
    """Weight initialisation and common attributes of the data2vec 2.0 models."""

    supports_gradient_checkpointing = True
    # the heads return a mean loss: Trainer must divide it by the accumulation steps itself
    accepts_loss_kwargs = False
    # a pretraining checkpoint's teacher and decoder are not part of an encoder or a downstream model
    _keys_to_ignore_on_load_unexpected = [r"^teacher\.", r"^decoder\."]
    _no_split_modules = ["Data2Vec2Block"]
    _supports_sdpa = True

    @package_only
    def save_pretrained(self, save_directory, *args, remote_code: bool | None = None, **kwargs):
        """``PreTrainedModel.save_pretrained``; with ``remote_code=True`` the folder also gets
        self-contained configuration and modelling files and an ``auto_map``, so that transformers loads
        it with ``trust_remote_code=True`` where data2vec_hf is not installed (see ``remote_code.py``).
        Without it the config carries no ``auto_map`` (not even one read from a remote-code folder: it
        would name files this folder does not have)."""
        remote_code = getattr(self, "_push_remote_code", False) if remote_code is None else remote_code
        stale = self.config.__dict__.pop("auto_map", None)
        try:
            result = super().save_pretrained(save_directory, *args, **kwargs)
        finally:
            if stale is not None:
                self.config.auto_map = stale
        if remote_code and kwargs.get("is_main_process", True):
            from .remote_code import export_remote_code

            export_remote_code(self, save_directory)
        return result

    @package_only
    def push_to_hub(self, *args, remote_code: bool = False, **kwargs):
        """``PreTrainedModel.push_to_hub``; ``remote_code=True`` uploads the files that
        ``save_pretrained(..., remote_code=True)`` writes (push_to_hub saves through save_pretrained)."""
        self._push_remote_code = remote_code
        try:
            return super().push_to_hub(*args, **kwargs)
        finally:
            self._push_remote_code = False

    @torch.no_grad()
    def _init_weights(self, module):
        """fairseq's data2vec 2.0 initialisation: ``init_bert_params`` on the whole model (Linear and
        Embedding N(0, 0.02), zero biases), then the modules a modality resets — marked here with
        ``init_scheme``: ``"default"`` (PyTorch's own init: decoder convs and projection, positional
        convs, the audio feature projection) or ``"xavier"`` (the patch embedding, as MAE). Other convs
        (the audio CNN) are Kaiming-normal. transformers' init functions skip loaded tensors."""
        std = self.config.initializer_range
        scheme = getattr(module, "init_scheme", None)
        if scheme == "default":
            pytorch_default_init(module)
        elif scheme == "xavier":
            if not getattr(module.weight, "_is_hf_initialized", False):
                nn.init.xavier_uniform_(module.weight.view(module.weight.shape[0], -1))
            pytorch_default_init(module, weight=False)
        elif isinstance(module, nn.Linear):
            init.normal_(module.weight, 0.0, std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            init.normal_(module.weight, 0.0, std)
            if module.padding_idx is not None and not getattr(module.weight, "_is_hf_initialized", False):
                module.weight[module.padding_idx].zero_()
        elif isinstance(module, nn.LayerNorm) and module.weight is not None:
            init.ones_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, nn.Conv1d | nn.Conv2d):
            init.kaiming_normal_(module.weight)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, Data2Vec2Backbone):
            if module.extra_tokens is not None:
                # fairseq: zeros (init_extra_token_zero), else N(0, 1); tokens after the first are N(0, 1)
                init.normal_(module.extra_tokens, 0.0, 1.0)
                if self.config.init_extra_token_zero and not getattr(
                    module.extra_tokens, "_is_hf_initialized", False
                ):
                    module.extra_tokens[:, 0].zero_()
            if module._part("alibi_scale") is not None:
                init.constant_(module.alibi_scale, module.config.alibi_scale_init)
            module.reset_constant_buffers()


def pytorch_default_init(module: nn.Module, weight: bool = True) -> None:
    """PyTorch's own initialisation of a Linear/Conv layer (Kaiming-uniform with a = √5 and a uniform
    bias of ±1/√fan_in), leaving tensors loaded from a checkpoint alone."""
    fan_in = module.weight[0].numel()
    if weight:
        init.kaiming_uniform_(module.weight, a=math.sqrt(5))
    if module.bias is not None:
        bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0
        init.uniform_(module.bias, -bound, bound)


def mark_init(modules, scheme: str) -> None:
    """Tag Linear/Conv modules with the initialisation scheme :meth:`_init_weights` gives them."""
    for module in modules:
        if isinstance(module, nn.Linear | nn.Conv1d | nn.Conv2d):
            module.init_scheme = scheme


class Data2Vec2Backbone(Data2Vec2PreTrainedModel):
    """Shared encoder logic; a modality subclass builds the local encoder and positional parts.

    Subclasses implement ``local_features(**inputs) -> (features B x T x D, padding_mask or None)`` and may
    set ``fixed_positions`` (1 x T x D buffer), ``relative_positions`` (module on B x T x D) and
    ``alibi_scale`` (learned per-head ALiBi scale).
    """

    input_name: ClassVar[str]

    def _build_shared(self, config):
        self.extra_tokens = (
            nn.Parameter(torch.zeros(1, config.num_extra_tokens, config.hidden_size))
            if config.num_extra_tokens
            else None
        )
        self.context_norm = (
            nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps) if self.has_context_norm else None
        )
        self.context_dropout = dropout(config.prenet_dropout)
        self.prenet = nn.ModuleList(Data2Vec2Block(config) for _ in range(config.prenet_depth))
        rates = torch.linspace(0, config.drop_path_rate, config.num_hidden_layers).tolist()
        self.blocks = nn.ModuleList(Data2Vec2Block(config, rate) for rate in rates)

    has_context_norm = True

    # optional parts a modality may define: ``fixed_positions`` (buffer), ``relative_positions`` (module),
    # ``alibi_scale`` (parameter)
    def _part(self, name):
        return getattr(self, name, None)

    def local_features(self, **inputs) -> tuple[torch.Tensor, torch.Tensor | None]:
        raise NotImplementedError

    def reset_constant_buffers(self) -> None:
        """Recompute non-persistent constant buffers (they are not in checkpoints)."""

    def _alibi(self, batch: int, length: int, device) -> torch.Tensor | None:
        alibi_scale = self._part("alibi_scale")
        if alibi_scale is None:
            return None
        bias = alibi_bias_1d(self.config.num_attention_heads, length, device)
        scale = alibi_scale.clamp_min(0).view(-1, 1, 1)
        return (bias * scale).unsqueeze(0).expand(batch, -1, -1, -1)

    def contextualize(self, features, padding_mask=None, mask_info: MaskInfo | None = None):
        """Positions, masking (dropping masked positions), extra tokens, context norm and prenet.
        Returns the block input, the padding mask of what is kept and the additive attention bias."""
        batch, length, _ = features.shape
        x = features
        fixed, relative = self._part("fixed_positions"), self._part("relative_positions")
        if fixed is not None:
            x = x + fixed[:, :length]
        if relative is not None:
            # masked positions are zeroed before the positional convolution, as in fairseq
            source = x if mask_info is None else x.masked_fill(mask_info.mask.unsqueeze(-1), 0.0)
            positions = conv_positions(relative, source, padding_mask)
        bias = self._alibi(batch, length, x.device)
        if mask_info is not None:
            x = gather_positions(x, mask_info.ids_keep)
            if relative is not None:
                positions = gather_positions(positions, mask_info.ids_keep)
            if padding_mask is not None:
                padding_mask = gather_positions(padding_mask, mask_info.ids_keep)
            if bias is not None:
                keep = mask_info.ids_keep
                bias = torch.gather(bias, 2, keep[:, None, :, None].expand(-1, bias.shape[1], -1, length))
                bias = torch.gather(
                    bias, 3, keep[:, None, None, :].expand(-1, bias.shape[1], keep.shape[1], -1)
                )
        if relative is not None:
            x = x + positions
        if self.extra_tokens is not None:
            num = self.extra_tokens.shape[1]
            x = torch.cat([self.extra_tokens.expand(x.shape[0], -1, -1), x], dim=1)
            if padding_mask is not None:
                padding_mask = F.pad(padding_mask, (num, 0), value=False)
            if bias is not None:
                bias = F.pad(bias, (num, 0, num, 0))
        if padding_mask is not None and not padding_mask.any():
            padding_mask = None
        if padding_mask is not None:
            pad_bias = torch.zeros(padding_mask.shape, dtype=x.dtype, device=x.device).masked_fill(
                padding_mask, float("-inf")
            )
            pad_bias = pad_bias[:, None, None, :]
            bias = pad_bias if bias is None else bias + pad_bias
        if self.context_norm is not None:
            x = self.context_norm(x)
        x = self.context_dropout(x)
        x = run_blocks(self.prenet, x, bias, self.config.prenet_layerdrop, self.training)
        return x, padding_mask, bias

    def encode(
        self,
        inputs: dict,
        attention_mask: torch.Tensor | None = None,
        local_features: torch.Tensor | None = None,
        output_hidden_states: bool = False,
        return_dict: bool = True,
    ):
        """Encode the full (unmasked) input; each modality's ``forward`` calls this. ``local_features``
        (with ``attention_mask`` at their resolution, 1 = real) skips the local encoder — the EMA teacher
        uses it."""
        if local_features is None:
            local_features, padding_mask = self.local_features(attention_mask=attention_mask, **inputs)
        else:
            padding_mask = None if attention_mask is None else attention_mask == 0
        x, _, bias = self.contextualize(local_features, padding_mask)
        hidden_states = [x] if output_hidden_states else None
        x = run_blocks(self.blocks, x, bias, self.config.layerdrop, self.training, hidden_states)
        if not return_dict:
            return (x, tuple(hidden_states)) if output_hidden_states else (x,)
        return BaseModelOutput(
            last_hidden_state=x, hidden_states=tuple(hidden_states) if hidden_states else None
        )
