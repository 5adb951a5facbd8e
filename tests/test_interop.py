"""The pretraining model's backbone is a plain transformers data2vec checkpoint, and back."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch
from conftest import MODALITIES

HEADS = {
    "audio": "Data2VecAudioForCTC",
    "vision": "Data2VecVisionForImageClassification",
    "text": "Data2VecTextForSequenceClassification",
}

# Runs in a fresh interpreter that never imports data2vec_hf.
LOADER = textwrap.dedent(
    """
    import sys, torch, transformers
    from transformers import AutoConfig, AutoModel
    folder, head_name = sys.argv[1], sys.argv[2]
    data = torch.load(folder + "/io.pt")
    assert AutoConfig.from_pretrained(folder).model_type.startswith("data2vec-")
    model = AutoModel.from_pretrained(folder).eval()
    assert type(model).__module__.startswith("transformers."), type(model)
    head = getattr(transformers, head_name).from_pretrained(folder).eval()
    backbone = getattr(head, head.base_model_prefix)
    with torch.no_grad():
        got = model(data["input"]).last_hidden_state
        via_head = backbone(data["input"]).last_hidden_state
    assert torch.equal(got, via_head)
    # our training-time speech CNN uses contiguous layouts (layout.py): same arithmetic, other rounding
    diff = (got - data["expected"]).abs().max().item()
    assert diff <= 1e-5, diff
    assert "data2vec_hf" not in sys.modules
    print("ok", type(model).__name__, type(head).__name__)
    """
)


def test_backbone_loads_in_plain_transformers(modality, tmp_path):
    model_cls, make_config, make_inputs, _ = MODALITIES[modality]
    torch.manual_seed(0)
    model = model_cls(make_config()).eval()
    backbone = getattr(model, model.base_model_prefix)
    backbone.save_pretrained(tmp_path)
    first_input = next(iter(make_inputs(torch.Generator().manual_seed(2)).values()))
    with torch.no_grad():
        expected = backbone(first_input).last_hidden_state
    torch.save({"input": first_input, "expected": expected}, tmp_path / "io.pt")

    result = subprocess.run(
        [sys.executable, "-c", LOADER, str(tmp_path), HEADS[modality]],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.startswith("ok")


def test_pretraining_model_continues_from_native_checkpoint(modality, tmp_path):
    model_cls, make_config, make_inputs, _ = MODALITIES[modality]
    torch.manual_seed(0)
    source = model_cls(make_config()).eval()
    getattr(source, source.base_model_prefix).save_pretrained(tmp_path)

    torch.manual_seed(123)  # a different seed: nothing may be left from a fresh init
    extra = {"mask_token_id": 39} if modality == "text" else {}
    loaded = model_cls.from_pretrained(tmp_path, average_top_k_layers=2, **extra).eval()
    assert type(loaded.config) is model_cls.config_class
    saved = getattr(source, source.base_model_prefix).state_dict()
    restored = getattr(loaded, loaded.base_model_prefix).state_dict()
    assert list(saved) == list(restored)  # the same tensors, so none is left out of the comparison
    for name, tensor in saved.items():
        assert torch.equal(tensor, restored[name]), name
    student = dict(loaded.teacher_source().named_parameters())
    for name, p in loaded.teacher.model.named_parameters():
        assert torch.equal(p, student[name]), f"teacher {name} is not a copy of the student"
    inputs = make_inputs(torch.Generator().manual_seed(3))
    assert torch.isfinite(loaded(**inputs).loss)


def test_top_k_larger_than_depth_is_a_clear_error(tmp_path):
    model_cls, make_config, _, _ = MODALITIES["audio"]
    model_cls(make_config()).data2vec_audio.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="average_top_k_layers=8 must be between 1 and num_hidden_layers=3"):
        model_cls.from_pretrained(tmp_path)
