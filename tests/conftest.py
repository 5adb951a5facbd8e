"""Tiny configs and inputs shared by the tests (hidden 32, 2-3 layers)."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import data2vec_hf  # noqa: E402  (registers the Auto classes)

# fairseq reference outputs and training-step fixtures, copied into the repository (see fixtures/README.md)
FIXTURES_DIR = os.path.join(os.path.dirname(__file__), "fixtures")
REFERENCE_DIR = os.path.join(FIXTURES_DIR, "fairseq")
TRAIN_REFERENCE_DIR = os.path.join(FIXTURES_DIR, "fairseq-train")


def tiny_audio_config(**overrides):
    values = dict(
        hidden_size=32,
        num_hidden_layers=3,
        num_attention_heads=4,
        intermediate_size=64,
        conv_dim=(32, 32, 32),
        conv_kernel=(10, 3, 3),
        conv_stride=(5, 2, 2),
        num_conv_pos_embedding_groups=4,
        conv_pos_kernel_size=7,
        num_conv_pos_embeddings=2,
        average_top_k_layers=2,
        mask_prob=0.5,
        mask_length=4,
    )
    values.update(overrides)
    return data2vec_hf.Data2VecAudioPreTrainingConfig(**values)


def tiny_vision_config(**overrides):
    values = dict(
        hidden_size=32,
        num_hidden_layers=3,
        num_attention_heads=4,
        intermediate_size=64,
        image_size=32,
        patch_size=8,
        average_top_k_layers=2,
        min_mask_patches_per_block=2,
        drop_path_rate=0.0,
        ema_anneal_end_step=1000,  # the recipe's None means "the whole run", which only the scripts know
    )
    values.update(overrides)
    return data2vec_hf.Data2VecVisionPreTrainingConfig(**values)


def tiny_text_config(**overrides):
    values = dict(
        vocab_size=40,
        hidden_size=32,
        num_hidden_layers=3,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=66,
        mask_token_id=39,
        average_top_k_layers=2,
        mlm_probability=0.3,
        mask_span_length=1,
    )
    values.update(overrides)
    return data2vec_hf.Data2VecTextPreTrainingConfig(**values)


def audio_inputs(generator):
    return {"input_values": torch.randn(2, 1600, generator=generator)}


def vision_inputs(generator):
    return {"pixel_values": torch.randn(2, 3, 32, 32, generator=generator)}


def text_inputs(generator):
    ids = torch.randint(4, 39, (2, 12), generator=generator)
    ids[:, 0], ids[:, -1] = 0, 2
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


MODALITIES = {
    "audio": (data2vec_hf.Data2VecAudioForPreTraining, tiny_audio_config, audio_inputs, "mask_time_indices"),
    "vision": (
        data2vec_hf.Data2VecVisionForPreTraining,
        tiny_vision_config,
        vision_inputs,
        "bool_masked_pos",
    ),
    "text": (data2vec_hf.Data2VecTextForPreTraining, tiny_text_config, text_inputs, "masked_positions"),
}


@pytest.fixture(params=sorted(MODALITIES))
def modality(request):
    return request.param


@pytest.fixture
def generator():
    return torch.Generator().manual_seed(0)
