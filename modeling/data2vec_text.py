"""data2vec 1.0 text: pretraining config and model on transformers' ``Data2VecTextModel``."""

from __future__ import annotations

import torch
from huggingface_hub.dataclasses import strict
from torch import nn
from transformers import Data2VecTextConfig, Data2VecTextModel
from transformers.models.data2vec.modeling_data2vec_text import Data2VecTextPreTrainedModel

from .masking import mask_tokens
from .objective import OBJECTIVE_DOC, Data2VecBackboneConfigMixin, Data2VecPreTrainingMixin
from .targets import record_outputs


@strict
class Data2VecTextPreTrainingConfig(Data2VecTextConfig, Data2VecBackboneConfigMixin):
    __doc__ = (
        """Configuration of :class:`Data2VecTextForPreTraining`.

    All fields of ``transformers.Data2VecTextConfig`` describe the backbone (defaults: the released
    base model with RoBERTa's GPT-2 BPE vocabulary). Defaults of the pretraining fields follow fairseq's
    ``examples/data2vec/config/text/pretraining/base.yaml`` (task ``masked_lm`` and model sections).

    Masking and head fields:

        mask_token_id (`int`): id of the mask token (RoBERTa's ``<mask>`` = 50264).
        mlm_probability (`float`): fraction of tokens selected for prediction (0.35).
        mask_replace_prob (`float`): fraction of selected tokens replaced by the mask token (1.0).
        random_replace_prob (`float`): fraction of selected tokens replaced by a random token (0.0);
            the rest are left unchanged. BERT's split is 0.8 / 0.1.
        mask_span_length (`int`): selected tokens come in runs of this length (fairseq's
            ``mask_multiple_length``, 4).
        head_layers (`int`): layers of the regression head (2: D → 2D → GELU → D).
        regress_only_mask_tokens (`bool`): regress only the selected positions that show the mask token
            (fairseq: ``src_tokens == <mask>``); False regresses every selected position, also those
            replaced by a random token or left unchanged (the same for the released recipe, which masks
            every selected token).
"""
        + OBJECTIVE_DOC
    )

    model_type = "data2vec-text-pretraining"
    backbone_config_class = Data2VecTextConfig
    pretraining_only_fields = (
        "mask_token_id",
        "mlm_probability",
        "mask_replace_prob",
        "random_replace_prob",
        "mask_span_length",
        "head_layers",
        "regress_only_mask_tokens",
    )

    # backbone defaults of the released base model (fairseq RoBERTa layout)
    vocab_size: int = 50265
    max_position_embeddings: int = 514
    type_vocab_size: int = 1
    layer_norm_eps: float = 1e-5
    # objective
    average_top_k_layers: int = 10
    layer_norm_target_layer: bool = True
    loss_beta: float | int = 4.0
    loss_scale: float | int | None = 1.0
    ema_decay: float = 0.999
    ema_end_decay: float = 0.9999
    ema_anneal_end_step: int = 300000
    # fairseq's data2vec_text has no collapse guard
    min_target_var: float = 0.0
    min_pred_var: float = 0.0
    # masking and head
    mask_token_id: int = 50264
    mlm_probability: float = 0.35
    mask_replace_prob: float = 1.0
    random_replace_prob: float = 0.0
    mask_span_length: int = 4
    head_layers: int = 2
    regress_only_mask_tokens: bool = True


def build_regression_head(hidden_size: int, num_layers: int) -> nn.Sequential:
    """fairseq's data2vec text regression head: (D → 2D → GELU)^(n−1) → D."""
    modules, dim = [], hidden_size
    for i in range(num_layers - 1):
        next_dim = hidden_size * 2 if i == 0 else dim
        modules += [nn.Linear(dim, next_dim), nn.GELU()]
        dim = next_dim
    modules.append(nn.Linear(dim, hidden_size))
    return nn.Sequential(*modules)


def special_tokens_mask(config, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None):
    """Positions that are never masked: padding and the pad/bos/eos tokens."""
    special = torch.zeros_like(input_ids, dtype=torch.bool)
    for token_id in (config.pad_token_id, config.bos_token_id, config.eos_token_id):
        if token_id is not None:
            special |= input_ids == token_id
    if attention_mask is not None:
        special |= attention_mask == 0
    return special


def sample_text_masks(config, batch: dict, generators: list[torch.Generator]) -> dict:
    """Per-example token masking; returns the student's ``input_ids`` and the ``labels``."""
    input_ids, attention_mask = batch["input_ids"], batch.get("attention_mask")
    special = special_tokens_mask(config, input_ids, attention_mask)
    rows = [
        mask_tokens(
            input_ids[i : i + 1],
            special[i : i + 1],
            config.mask_token_id,
            config.vocab_size,
            mlm_probability=config.mlm_probability,
            mask_replace_prob=config.mask_replace_prob,
            random_replace_prob=config.random_replace_prob,
            span_length=config.mask_span_length,
            generator=g,
        )
        for i, g in enumerate(generators)
    ]
    return {"input_ids": torch.cat([r[0] for r in rows]), "labels": torch.cat([r[1] for r in rows])}


class Data2VecTextForPreTraining(Data2VecPreTrainingMixin, Data2VecTextPreTrainedModel):
    """data2vec 1.0 text pretraining: a ``Data2VecTextModel`` student (no pooler), a regression head
    and an EMA teacher of the transformer layers (embeddings shared with the student, as in fairseq).

    The teacher reads the original tokens; the student the masked ones. Masked positions are those
    where ``labels != -100`` (``DataCollatorForLanguageModeling`` convention), or ``masked_positions``,
    or, when neither is given, a mask sampled from the config.
    """

    config_class = Data2VecTextPreTrainingConfig
    teacher_shared = ("embeddings",)
    _keys_to_ignore_on_load_unexpected = [r"^lm_head\.", r"^classifier\.", r"pooler\."]

    def __init__(self, config: Data2VecTextPreTrainingConfig):
        super().__init__(config)
        if not 0 <= config.mask_token_id < config.vocab_size:
            raise ValueError(
                f"mask_token_id={config.mask_token_id} is outside the vocabulary (vocab_size={config.vocab_size}); "
                "set mask_token_id to your tokenizer's mask token id"
            )
        self.data2vec_text = Data2VecTextModel(config.to_backbone_config(), add_pooling_layer=False)
        # fairseq's encoder has no token-type embedding: transformers' single row is a constant offset,
        # kept fixed (zero unless loaded) so that it is not an extra trainable bias
        token_type = self.data2vec_text.embeddings.token_type_embeddings.weight
        with torch.no_grad():
            token_type.zero_()
        token_type.requires_grad_(False)
        self.regression_head = build_regression_head(config.hidden_size, config.head_layers)
        self._build_teacher()
        self.post_init()
        self.reset_teacher()

    def teacher_source(self) -> nn.Module:
        return self.data2vec_text

    def sample_mask(self, input_ids, attention_mask=None, generator=None):
        """Mask ``input_ids`` with the config's probabilities; returns ``(masked_ids, labels)``."""
        batch = {
            "input_ids": input_ids.cpu(),
            "attention_mask": None if attention_mask is None else attention_mask.cpu(),
        }
        masked = sample_text_masks(self.config, batch, [generator] * len(input_ids))
        return masked["input_ids"].to(input_ids.device), masked["labels"].to(input_ids.device)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        masked_positions: torch.Tensor | None = None,
        **kwargs,
    ):
        """``input_ids`` are the student's (already masked when ``labels`` is given) tokens."""
        if labels is not None:
            selected = labels != -100
            original_ids = torch.where(selected, labels, input_ids)
            student_ids = input_ids
            mask = selected
            if self.config.regress_only_mask_tokens:
                mask = selected & (input_ids == self.config.mask_token_id)
        elif masked_positions is not None:
            mask = masked_positions.to(device=input_ids.device, dtype=torch.bool)
            original_ids = input_ids
            student_ids = input_ids.masked_fill(mask, self.config.mask_token_id)
        else:
            original_ids = input_ids
            student_ids, labels = self.sample_mask(input_ids, attention_mask)
            mask = labels != -100
            if self.config.regress_only_mask_tokens:
                mask &= student_ids == self.config.mask_token_id

        backbone = self.data2vec_text
        encoded = backbone(input_ids=student_ids, attention_mask=attention_mask).last_hidden_state
        prediction = self.regression_head(encoded[mask])

        layers = self.teacher.model.encoder.layer  # the teacher's own (averaged) layers
        with record_outputs([layer.output.dense for layer in layers]) as ffn_outputs:
            self.teacher.run(backbone, input_ids=original_ids, attention_mask=attention_mask)
        target = self._targets(ffn_outputs)[mask]
        return self._objective(prediction, target, mask, encoded)


class Data2VecTextPreTrainingBackbone(Data2VecTextModel):
    """The student encoder of a pretraining checkpoint, for ``AutoModel.from_pretrained`` on it."""

    config_class = Data2VecTextPreTrainingConfig
    _keys_to_ignore_on_load_unexpected = [r"^teacher\.", r"^regression_head\."]

    def __init__(self, config, add_pooling_layer: bool = False):
        super().__init__(config, add_pooling_layer=add_pooling_layer)
