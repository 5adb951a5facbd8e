"""Model cards: every packaged template renders through the one rendering function and parses with
huggingface_hub's ``ModelCard``; the fine-tuning cards carry the metadata and a model-index."""

from __future__ import annotations

from importlib import resources
from types import SimpleNamespace

import pytest
from data2vec_hf.cards import render_model_card
from data2vec_hf.finetuning import common
from huggingface_hub import ModelCard, ModelCardData

TEMPLATES = sorted(
    p.name.removesuffix(".md")
    for p in resources.files("data2vec_hf.model_cards").iterdir()
    if p.name.endswith(".md")
)
FINETUNED = {
    "finetuned_text_classification": ("text-classification", "text"),
    "finetuned_speech_recognition": ("automatic-speech-recognition", "audio"),
    "finetuned_image_classification": ("image-classification", "vision"),
}


def test_fine_tuning_templates_are_packaged():
    assert set(FINETUNED) <= set(TEMPLATES) and "pretraining" in TEMPLATES


@pytest.mark.parametrize("template", TEMPLATES)
def test_every_template_renders_and_parses(template, tmp_path):
    """Pretraining, conversion and fine-tuning templates share render_model_card; metadata round-trips."""
    data = ModelCardData(
        model_name="tiny",
        library_name="transformers",
        tags=["data2vec"],
        base_model="facebook/data2vec-audio-base",
        datasets=["librispeech_asr"],
    )
    card = render_model_card(template, data, model_name="tiny")
    card.save(tmp_path / "README.md")
    parsed = ModelCard.load(tmp_path / "README.md")
    assert parsed.data.library_name == "transformers" and parsed.data.tags == ["data2vec"]
    assert parsed.data.base_model == "facebook/data2vec-audio-base"
    assert parsed.data.datasets == ["librispeech_asr"]
    assert "tiny" in parsed.text


def fake_trainer(output_dir, model_type: str):
    """What write_card_and_push reads from a Trainer."""
    args = SimpleNamespace(
        output_dir=str(output_dir),
        per_device_train_batch_size=8,
        gradient_accumulation_steps=2,
        world_size=1,
        learning_rate=1e-4,
        lr_scheduler_type="linear",
        warmup_steps=0.1,
        optim="adamw_torch",
        weight_decay=0.05,
        seed=3,
    )
    model = SimpleNamespace(config=SimpleNamespace(model_type=model_type))
    return SimpleNamespace(
        args=args,
        model=model,
        state=SimpleNamespace(global_step=120, epoch=3.0),
        is_world_process_zero=lambda: True,
    )


@pytest.mark.parametrize("template", sorted(FINETUNED))
@pytest.mark.parametrize("model_type", ["data2vec-text", "data2vec2-text"])
def test_fine_tuning_card_metadata_and_model_index(template, model_type, tmp_path):
    task_type, modality = FINETUNED[template]
    trainer = fake_trainer(tmp_path, model_type)
    hub = common.HubSettings(push=False, repo_id="someone/d2v-finetuned", token=None, private=None)
    model_args = common.ModelArguments(model_name_or_path=str(tmp_path), base_model_id="someone/d2v-base")
    dataset = common.DatasetDescription(name="glue (mnli)", hub_id="nyu-mll/glue", config="mnli")
    results = [
        ("validation_matched", {"accuracy": 0.8125, "combined_score": 0.5}),
        ("validation_mismatched", {"accuracy": 0.75}),
    ]
    path = common.write_card_and_push(
        trainer,
        hub,
        template=template,
        model_args=model_args,
        dataset=dataset,
        task_type=task_type,
        task_name="Some Task",
        modality=modality,
        results=results,
        usage='from transformers import pipeline\n{import_data2vec_hf}pipeline("{model}")',
        extra_training=[("layer-wise lr decay", 0.65)],
        tags=["glue"],
    )
    card = ModelCard.load(path)
    data = card.data
    assert data.library_name == "transformers" and data.pipeline_tag == task_type
    assert data.base_model == "someone/d2v-base" and data.datasets == ["nyu-mll/glue"]
    version = "2.0" if model_type.startswith("data2vec2") else "1.0"
    assert data.tags == ["data2vec", f"data2vec-{version}", modality, task_type, "data2vec-hf", "glue"]
    assert data.metrics == ["accuracy"]  # combined_score stays out of the card
    assert data.model_name == "someone/d2v-finetuned"
    found = {(r.dataset_split, r.metric_type): r.metric_value for r in data.eval_results}
    assert found == {("validation_matched", "accuracy"): 0.8125, ("validation_mismatched", "accuracy"): 0.75}
    for result in data.eval_results:
        assert result.task_type == task_type and result.dataset_type == "nyu-mll/glue"
        assert result.dataset_config == "mnli"
    index = data.to_dict()["model-index"]
    assert index[0]["name"] == "someone/d2v-finetuned" and len(index[0]["results"]) == 2
    assert ("import data2vec_hf" in card.text) == (version == "2.0")
    assert 'pipeline("someone/d2v-finetuned")' in card.text
    assert f"data2vec {version}" in card.text and "| layer-wise lr decay | 0.65 |" in card.text
    assert "| updates | 120 |" in card.text and "8 x 2 x 1" in card.text


def test_local_data_card_has_no_datasets_entry(tmp_path):
    trainer = fake_trainer(tmp_path, "data2vec-audio")
    hub = common.HubSettings(push=False, repo_id="asr", token=None, private=None)
    args = SimpleNamespace(train_dir=str(tmp_path / "my_speech"), dataset_name=None)
    dataset = common.DatasetDescription.from_args(args)
    assert dataset.name == "my_speech" and dataset.hub_id is None
    path = common.write_card_and_push(
        trainer,
        hub,
        template="finetuned_speech_recognition",
        model_args=common.ModelArguments(model_name_or_path=str(tmp_path)),
        dataset=dataset,
        task_type="automatic-speech-recognition",
        task_name="Automatic Speech Recognition",
        modality="audio",
        results=[("validation", {"wer": 0.25, "cer": 0.1})],
        usage="",
        sampling_rate=16000,
    )
    data = ModelCard.load(path).data
    assert data.datasets is None and data.base_model is None  # a local folder is no Hub id
    assert [(r.metric_type, r.dataset_type, r.dataset_name) for r in data.eval_results] == [
        ("wer", "local", "my_speech"),
        ("cer", "local", "my_speech"),
    ]
