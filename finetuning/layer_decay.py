"""Layer-wise learning-rate decay for fine-tuning (BEiT / data2vec): BEiT's layer id of a parameter,
optimizer parameter groups with decayed learning rates, and a ``Trainer`` that uses them.
"""

from __future__ import annotations

import re

from torch import nn
from transformers import Trainer

# Block index in transformers' naming (``encoder.layer.3.``) and in timm/fairseq-style naming
# (``blocks.3.``, ``layers.3.``).
_BLOCK = re.compile(r"(?:^|\.)(?:layer|layers|blocks)\.(\d+)\.")
# Layer 0: everything before the blocks. 1.0: ``embeddings`` (patch projection, CLS token; text: token and
# position embeddings), audio's convolutional feature encoder, projection and positional convolution. 2.0
# (as fairseq's data2vec2 fine-tuning): the whole modality encoder — local encoder (patch embedding, CNN +
# projection, token + position embeddings and their norm), relative positions, ALiBi scale, extra (CLS)
# tokens, context norm and prenet blocks.
_EMBEDDING = re.compile(
    r"(?:^|\.)(?:embeddings|word_embeddings|position_embeddings|embedding_norm|patch_embed\w*|cls_token"
    r"|mask_token|pos_embed\w*|extra_tokens|context_norm|prenet|relative_positions|alibi_scale|local_encoder"
    r"|feature_extractor|feature_projection|pos_conv_embed|masked_spec_embed)(?:\.|$)"
)
# The backbone of a Data2Vec2* task model: in it, ``blocks.i`` is block i and everything else is the
# modality encoder.
_V2_BACKBONE = re.compile(r"^data2vec2_(?:audio|vision|text)\.")
_V2_BLOCK = re.compile(r"blocks\.(\d+)\.")
# No weight decay, as BEiT: every 1-D parameter (biases, norms, layer scales), plus these tokens/tables.
NO_WEIGHT_DECAY = ("cls_token", "mask_token", "position_embeddings", "pos_embed", "extra_tokens")


def layer_id(name: str, num_layers: int) -> int:
    """BEiT's layer id of a parameter: embeddings (2.0: the modality encoder) 0, block ``i`` → ``i + 1``,
    everything after the blocks (final norm/pooler, head, a relative position bias shared by all blocks)
    ``num_layers + 1``."""
    backbone = _V2_BACKBONE.match(name)
    if backbone:
        block = _V2_BLOCK.match(name, backbone.end())
        return int(block.group(1)) + 1 if block else 0
    block, embedding = _BLOCK.search(name), _EMBEDDING.search(name)
    # the outer of the two decides: ``encoder.pos_conv_embed.layers.0.conv`` (the positional convolution
    # before the blocks) is part of the embeddings, not block 0
    if embedding is not None and (block is None or embedding.start() < block.start()):
        return 0
    if block is not None:
        return int(block.group(1)) + 1
    return num_layers + 1


def layer_decay_parameter_groups(
    model: nn.Module,
    learning_rate: float,
    weight_decay: float,
    layer_decay: float,
    num_layers: int | None = None,
) -> list[dict]:
    """Optimizer parameter groups with ``lr = learning_rate * layer_decay ** (num_layers + 1 - layer_id)``.

    timm has the same idea in ``timm.optim.param_groups_layer_decay``, but it is not reused here: it
    finds the blocks through a timm model's ``group_matcher()`` (``blocks.N``, ``patch_embed``), which
    transformers' modules (``encoder.layer.N``, ``embeddings``) do not have — without it, timm falls back
    to cutting the parameter list into equal chunks regardless of block boundaries — and it returns an
    ``lr_scale`` per group that only timm's schedulers apply (transformers' LambdaLR schedules ignore
    it). So the groups here carry the scaled ``lr`` itself, which every torch scheduler preserves.
    """
    if num_layers is None:
        num_layers = model.config.num_hidden_layers
    groups: dict[tuple[int, bool], dict] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        layer = layer_id(name, num_layers)
        decay = not (param.ndim <= 1 or name.endswith(".bias") or any(k in name for k in NO_WEIGHT_DECAY))
        scale = layer_decay ** (num_layers + 1 - layer)
        group = groups.setdefault(
            (layer, decay),
            {
                "params": [],
                "param_names": [],
                "weight_decay": weight_decay if decay else 0.0,
                "lr": learning_rate * scale,
                "lr_scale": scale,
                "layer_id": layer,
            },
        )
        group["params"].append(param)
        group["param_names"].append(name)
    # head first: the Trainer logs the first group's learning rate, which is then the undecayed one
    return [groups[key] for key in sorted(groups, key=lambda key: (-key[0], key[1]))]


class LayerDecayTrainer(Trainer):
    """``Trainer`` whose AdamW (or any ``--optim``) gets layer-wise decayed learning rates when
    ``layer_decay`` < 1; the schedule then scales every group's own ``lr``."""

    def __init__(self, *args, layer_decay: float = 1.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.layer_decay = layer_decay

    def create_optimizer(self, model=None):
        if self.optimizer is not None or self.layer_decay >= 1.0:
            return super().create_optimizer(model)
        model = self.model if model is None else model
        optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, model)
        groups = layer_decay_parameter_groups(
            model, self.args.learning_rate, self.args.weight_decay, self.layer_decay
        )
        for group in groups:
            group.pop("param_names")
        self.optimizer = optimizer_cls(groups, **optimizer_kwargs)
        return self.optimizer
