"""Registration of every data2vec_hf config and model with the transformers Auto classes."""

from __future__ import annotations

from transformers import AutoConfig, AutoModel, AutoModelForPreTraining


def register(config_cls, base_model_cls=None, pretraining_cls=None, task_models=()) -> None:
    """Register ``config_cls`` (by its ``model_type``) and its models; safe to call twice."""
    model_type = config_cls.model_type
    AutoConfig.register(model_type, config_cls, exist_ok=True)
    if base_model_cls is not None:
        AutoModel.register(config_cls, base_model_cls, exist_ok=True)
    if pretraining_cls is not None:
        AutoModelForPreTraining.register(config_cls, pretraining_cls, exist_ok=True)
    for auto_cls, model_cls in task_models:
        auto_cls.register(config_cls, model_cls, exist_ok=True)
