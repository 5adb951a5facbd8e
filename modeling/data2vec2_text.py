"""data2vec 2.0 text: config, encoder, pretraining model and sequence classification head."""

from __future__ import annotations

import torch
from huggingface_hub.dataclasses import strict
from torch import nn
from transformers import PreTrainedConfig
from transformers.modeling_outputs import SequenceClassifierOutput

from .data2vec2_config import DATA2VEC2_DOC, Data2Vec2ConfigMixin
from .data2vec2_encoder import Data2Vec2Backbone, Data2Vec2PreTrainedModel, classification_loss, dropout
from .data2vec2_pretraining import Data2Vec2PreTrainingMixin, Decoder, sample_clone_masks
from .objective import OBJECTIVE_DOC


@strict
class Data2Vec2TextConfig(PreTrainedConfig, Data2Vec2ConfigMixin):
    __doc__ = (
        """Configuration of the data2vec 2.0 text models. Defaults: fairseq's
    ``examples/data2vec/config/v2/base_text_only_task.yaml`` (RoBERTa's GPT-2 BPE vocabulary).

    Text fields:

        vocab_size (`int`), max_position_embeddings (`int`: positions + padding offset, fairseq style),
        pad_token_id / bos_token_id / eos_token_id (`int`), embedding_dropout (`float`): the token embedding
        (+ learned positions, + LayerNorm). classifier_dropout (`float`): the classification head.
"""
        + DATA2VEC2_DOC
        + OBJECTIVE_DOC
    )

    model_type = "data2vec2-text"

    vocab_size: int = 50265
    max_position_embeddings: int = 514
    pad_token_id: int | None = 1
    bos_token_id: int | None = 0
    eos_token_id: int | None = 2
    embedding_dropout: float | int = 0.1
    classifier_dropout: float | int | None = None
    # objective (base_text_only_task.yaml)
    average_top_k_layers: int = 12
    instance_norm_target_layer: bool = True
    loss_scale: float | int | None = 1.0
    ema_decay: float = 0.9999
    ema_end_decay: float = 0.99999
    ema_anneal_end_step: int = 100000
    clone_batch: int = 8
    mask_prob: float = 0.48
    mask_length: int = 1
    decoder_dim: int = 768
    decoder_kernel: int = 9
    decoder_layers: int = 5
    decoder_groups: int = 1
    decoder_residual: bool = False
    decoder_projection_layers: int = 2
    ema_encoder_only: bool = True


class Data2Vec2TextModel(Data2Vec2Backbone):
    """data2vec 2.0 text encoder: token embedding + learned positions (fairseq's padding offset) →
    LayerNorm → dropout → (prenet) → post-LN blocks."""

    base_model_prefix = "data2vec2_text"
    config_class = Data2Vec2TextConfig
    main_input_name = "input_ids"
    local_modules = ("word_embeddings", "position_embeddings", "embedding_norm")

    def __init__(self, config: Data2Vec2TextConfig):
        super().__init__(config)
        self.word_embeddings = nn.Embedding(
            config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id
        )
        self.position_embeddings = nn.Embedding(
            config.max_position_embeddings, config.hidden_size, padding_idx=config.pad_token_id
        )
        self.embedding_norm = nn.LayerNorm(config.hidden_size, eps=1e-5)
        self.embedding_dropout = dropout(config.embedding_dropout)
        self._build_shared(config)
        self.post_init()

    @property
    def has_context_norm(self) -> bool:  # fairseq adds the context LayerNorm only with prenet blocks
        return self.config.prenet_depth > 0

    def get_input_embeddings(self):
        return self.word_embeddings

    def set_input_embeddings(self, value):
        self.word_embeddings = value

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        local_features: torch.Tensor | None = None,
        output_hidden_states: bool = False,
        return_dict: bool = True,
        **kwargs,
    ):
        return self.encode(
            {"input_ids": input_ids}, attention_mask, local_features, output_hidden_states, return_dict
        )

    def local_features(self, input_ids, attention_mask=None):
        pad = self.config.pad_token_id
        real = input_ids.ne(pad) if attention_mask is None else attention_mask.bool() & input_ids.ne(pad)
        # fairseq's learned positions: real tokens count from pad + 1, padding sits at the pad index
        positions = torch.cumsum(real.long(), dim=1) * real.long() + pad
        x = self.embedding_norm(self.word_embeddings(input_ids) + self.position_embeddings(positions))
        padding_mask = ~real
        return self.embedding_dropout(x), (padding_mask if padding_mask.any() else None)


def sample_text_masks_v2(config, batch: dict, generators: list) -> dict:
    """Per-example clone masks for a padded batch; returns the forward argument ``masked_positions``."""
    input_ids, attention = batch["input_ids"], batch.get("attention_mask")
    padding = [None] * len(input_ids) if attention is None else list(attention == 0)
    return {"masked_positions": sample_clone_masks(config, (input_ids.shape[1],), padding, generators)}


class Data2Vec2TextForPreTraining(Data2Vec2PreTrainingMixin, Data2Vec2PreTrainedModel):
    """data2vec 2.0 text pretraining: no mask token — masked positions are dropped from the student and
    re-enter at the 1-D conv decoder; the teacher (transformer blocks only) reads the full text."""

    config_class = Data2Vec2TextConfig
    base_model_prefix = "data2vec2_text"
    main_input_name = "input_ids"

    def __init__(self, config: Data2Vec2TextConfig):
        super().__init__(config)
        self._setup(Data2Vec2TextModel(config), Decoder(config, dims=1))

    def forward(self, input_ids, attention_mask=None, masked_positions=None, **kwargs):
        """``masked_positions``: (B * clone_batch) x T booleans with equal counts per row."""
        return self.pretraining_step({"input_ids": input_ids}, attention_mask, masked_positions)


class Data2Vec2TextForSequenceClassification(Data2Vec2PreTrainedModel):
    """data2vec 2.0 encoder with a RoBERTa-style head on the first token (dense → tanh → out_proj)."""

    config_class = Data2Vec2TextConfig
    base_model_prefix = "data2vec2_text"
    main_input_name = "input_ids"

    def __init__(self, config):
        super().__init__(config)
        self.data2vec2_text = Data2Vec2TextModel(config)
        dropout = (
            config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout
        )
        self.dropout = nn.Dropout(dropout)
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.out_proj = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(self, input_ids, attention_mask=None, labels=None, output_hidden_states=False, **kwargs):
        out = self.data2vec2_text(
            input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=output_hidden_states
        )
        x = self.dropout(out.last_hidden_state[:, 0])
        logits = self.out_proj(self.dropout(torch.tanh(self.dense(x))))
        loss = None if labels is None else classification_loss(logits, labels, self.config)
        return SequenceClassifierOutput(loss=loss, logits=logits, hidden_states=out.hidden_states)
