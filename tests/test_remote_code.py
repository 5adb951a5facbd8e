"""Remote-code export of the data2vec 2.0 models (``save_pretrained(dir, remote_code=True)``).

* every 2.0 class (3 encoders, 3 pretraining models, 4 heads) is exported with remote code and loaded,
  in a **separate virtual environment that has torch and transformers but not data2vec_hf**, with its
  Auto class and ``trust_remote_code=True``; its outputs equal the original model's (the remote code has
  the plain convolutions of layout_reference.py, not layout.py's CPU kernels), and ``pipeline`` runs for
  the audio, vision and text models (one subprocess for everything);
* the exported files are the committed ones (modeling/remote-code/), and those are what the generator
  makes from the package source now, byte for byte (compared in memory: ``make remote-code`` writes
  them); the generator stops with file and line where the source breaks an authoring rule;
* the generated files are the package's own source (each definition verbatim), import only torch,
  numpy, transformers, huggingface_hub and the standard library, and carry the package version;
* without the option nothing changes; with data2vec_hf imported, remote-code folders load too.
"""

from __future__ import annotations

import ast
import copy
import inspect
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import data2vec_hf
import numpy as np
import pytest
import torch
from data2vec_hf import data2vec2, data2vec2_audio, ema, layout, layout_reference, masking, remote_code
from data2vec_hf.data2vec_audio import num_frames
from data2vec_hf.remote_code import (
    ALLOWED_IMPORTS,
    FOLDER,
    RemoteCodeError,
    auto_map,
    generate,
    generate_all,
    parse_module,
    stale_files,
)
from data2vec_hf.remote_code_cli import main as remote_code_cli
from safetensors.torch import load_file, save_file
from test_data2vec2 import audio_config, text_config, vision_config
from test_hub import DUMMY_TOKEN, hub  # noqa: F401  (the stand-in fixture)
from torch import nn
from transformers import (
    AutoModel,
    AutoModelForAudioClassification,
    AutoModelForCTC,
    AutoModelForImageClassification,
    AutoModelForPreTraining,
    AutoModelForSequenceClassification,
    pipeline,
)

TOLERANCE = 1e-6
#: remote code against the package in float32: the remote code runs the plain convolutions where the
#: package runs layout.py's CPU kernels, the same sums in another order (an audio encoder's hidden states,
#: about 4 in size, differ by about 3e-6; in float64 by 1e-14: test_remote_code_is_the_package_in_float64);
#: tests/test_cpu_kernels.py holds the kernels to the plain layers at 1e-5 as well
REMOTE_TOLERANCE = 1e-5
TINY = dict(num_hidden_layers=2, average_top_k_layers=2, num_labels=3)
CONFIGS = {"audio": audio_config, "vision": vision_config, "text": text_config}
#: exported folder → (config maker, class, Auto class name)
EXPORTS = {
    "audio-encoder": ("audio", "Data2Vec2AudioModel", "AutoModel"),
    "audio-pretraining": ("audio", "Data2Vec2AudioForPreTraining", "AutoModelForPreTraining"),
    "audio-ctc": ("audio", "Data2Vec2AudioForCTC", "AutoModelForCTC"),
    "audio-classification": (
        "audio",
        "Data2Vec2AudioForSequenceClassification",
        "AutoModelForAudioClassification",
    ),
    "vision-encoder": ("vision", "Data2Vec2VisionModel", "AutoModel"),
    "vision-pretraining": ("vision", "Data2Vec2VisionForPreTraining", "AutoModelForPreTraining"),
    "vision-classification": (
        "vision",
        "Data2Vec2VisionForImageClassification",
        "AutoModelForImageClassification",
    ),
    "text-encoder": ("text", "Data2Vec2TextModel", "AutoModel"),
    "text-pretraining": ("text", "Data2Vec2TextForPreTraining", "AutoModelForPreTraining"),
    "text-classification": (
        "text",
        "Data2Vec2TextForSequenceClassification",
        "AutoModelForSequenceClassification",
    ),
}
MASK_ARGUMENT = {"audio": "mask_time_indices", "vision": "bool_masked_pos", "text": "masked_positions"}
WORDS = "the a quick brown fox jumps over lazy dog cat".split()
LETTERS = list("ETAONRISHDLUCMFWYPGBVKXJQZ'")  # 27 + <pad>, <unk>, |, <s>, </s> → vocab_size 32


def make_inputs(generator) -> dict[str, dict[str, torch.Tensor]]:
    ids = torch.randint(4, 4 + len(WORDS), (2, 9), generator=generator)
    attention = torch.ones_like(ids)
    ids[1, 6:], attention[1, 6:] = 1, 0  # a padded row
    samples = torch.ones(2, 1600, dtype=torch.long)
    samples[1, 1200:] = 0
    return {
        "audio": {"input_values": torch.randn(2, 1600, generator=generator), "attention_mask": samples},
        "vision": {"pixel_values": torch.randn(2, 3, 32, 32, generator=generator)},
        "text": {"input_ids": ids, "attention_mask": attention},
    }


def outputs_of(model, inputs: dict, mask=None) -> dict[str, torch.Tensor]:
    """The tensors compared across environments (the pretraining models' decoder noise is seeded)."""
    torch.manual_seed(0)
    with torch.no_grad():
        if mask is None:
            out = model(**inputs)
        else:
            out = model(**inputs, **{MASK_ARGUMENT[model.config.model_type.split("-")[1]]: mask})
    names = ("last_hidden_state", "logits", "loss", "prediction", "target")
    return {name: out[name].detach() for name in names if out.get(name) is not None}


def save_processors(folder: Path, modality: str, kind: str, words=WORDS) -> None:
    """What the pipelines need next to the model: tokenizer, feature extractor / CTC processor, image
    processor — all built offline."""
    from transformers import (
        PreTrainedTokenizerFast,
        ViTImageProcessor,
        Wav2Vec2CTCTokenizer,
        Wav2Vec2FeatureExtractor,
        Wav2Vec2Processor,
    )

    if modality == "text":
        from tokenizers import Tokenizer, models, pre_tokenizers

        vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3, **{w: i + 4 for i, w in enumerate(words)}}
        backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
        backend.pre_tokenizer = pre_tokenizers.Whitespace()
        tokenizer = PreTrainedTokenizerFast(
            tokenizer_object=backend, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
        )
        tokenizer.save_pretrained(folder)
    elif modality == "audio":
        extractor = Wav2Vec2FeatureExtractor(
            sampling_rate=16000, do_normalize=False, return_attention_mask=True
        )
        if kind == "ctc":
            vocab = {"<pad>": 0, "<unk>": 1, "|": 2, "<s>": 3, "</s>": 4}
            vocab.update({c: i + 5 for i, c in enumerate(LETTERS)})
            (folder / "vocab.json").write_text(json.dumps(vocab))
            tokenizer = Wav2Vec2CTCTokenizer(folder / "vocab.json", word_delimiter_token="|")
            Wav2Vec2Processor(feature_extractor=extractor, tokenizer=tokenizer).save_pretrained(folder)
        else:
            extractor.save_pretrained(folder)
    else:
        ViTImageProcessor(size={"height": 32, "width": 32}, do_rescale=False).save_pretrained(folder)


# The script that runs in the fresh environment: it loads every folder with its Auto class and
# trust_remote_code=True, compares with the outputs recorded here, and runs the pipelines.
FRESH = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path

    try:
        import data2vec_hf  # noqa: F401
        importable = True
    except ImportError:
        importable = False
    import numpy as np
    import torch
    import transformers
    from safetensors.torch import load_file
    from transformers import pipeline

    root = Path(sys.argv[1])
    spec = json.loads((root / "spec.json").read_text())
    report = {"data2vec_hf_importable": importable, "diffs": {}, "classes": {}, "pipelines": {}}
    for folder, (kind, auto) in spec.items():
        model = getattr(transformers, auto).from_pretrained(root / folder, trust_remote_code=True).eval()
        report["classes"][folder] = [type(model).__name__, type(model).__module__]
        inputs = load_file(root / folder / "inputs.safetensors")
        expected = load_file(root / folder / "expected.safetensors")
        mask = inputs.pop("mask", None)
        arguments = dict(inputs)
        if mask is not None:
            arguments[{"audio": "mask_time_indices", "vision": "bool_masked_pos", "text": "masked_positions"}[kind]] = mask
        torch.manual_seed(0)
        with torch.no_grad():
            out = model(**arguments)
        report["diffs"][folder] = max((out[k] - v).abs().max().item() for k, v in expected.items())

    def probabilities(result):
        return {r["label"]: r["score"] for r in result}

    audio = np.load(root / "clip.npy")
    text = pipeline("feature-extraction", model=str(root / "text-encoder"), trust_remote_code=True)
    report["pipelines"]["feature-extraction"] = text("the quick brown fox", return_tensors=True)[0].tolist()
    classify = pipeline("text-classification", model=str(root / "text-classification"), trust_remote_code=True)
    report["pipelines"]["text-classification"] = probabilities(classify("the lazy dog", top_k=None))
    audio_tags = pipeline("audio-classification", model=str(root / "audio-classification"), trust_remote_code=True)
    report["pipelines"]["audio-classification"] = probabilities(audio_tags({"raw": audio, "sampling_rate": 16000}))
    asr = pipeline("automatic-speech-recognition", model=str(root / "audio-ctc"), trust_remote_code=True)
    report["pipelines"]["automatic-speech-recognition"] = asr({"raw": audio, "sampling_rate": 16000})["text"]
    image = np.load(root / "image.npy")
    images = pipeline("image-classification", model=str(root / "vision-classification"), trust_remote_code=True)
    report["pipelines"]["image-classification"] = probabilities(images(image, top_k=None))

    # a model loaded from remote code saves its code again (transformers copies the module files)
    model = transformers.AutoModelForCTC.from_pretrained(root / "audio-ctc", trust_remote_code=True)
    model.save_pretrained(root / "resaved")
    again = transformers.AutoModelForCTC.from_pretrained(root / "resaved", trust_remote_code=True).eval()
    inputs = load_file(root / "audio-ctc" / "inputs.safetensors")
    with torch.no_grad():
        logits = again(**inputs).logits
    report["diffs"]["resaved"] = (logits - load_file(root / "audio-ctc" / "expected.safetensors")["logits"]).abs().max().item()
    report["resaved_files"] = sorted(p.name for p in (root / "resaved").iterdir())
    print("REPORT" + json.dumps(report))
    """
)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """The ten classes exported with remote code, with inputs and the outputs they give here."""
    root = tmp_path_factory.mktemp("remote_code")
    inputs = make_inputs(torch.Generator().manual_seed(0))
    spec, models = {}, {}
    for folder, (modality, class_name, auto) in EXPORTS.items():
        torch.manual_seed(1)
        model = getattr(data2vec_hf, class_name)(CONFIGS[modality](**TINY)).eval()
        if class_name == "Data2Vec2AudioForSequenceClassification":
            model.config.problem_type = "multi_label_classification"  # tags: sigmoid in the pipeline
        model.save_pretrained(root / folder, remote_code=True)
        kind = folder.split("-")[1]
        save_processors(root / folder, modality, kind)
        tensors = dict(inputs[modality])
        if kind == "pretraining":  # a mask drawn here, passed explicitly in both environments
            backbone = getattr(model, model.base_model_prefix)
            with torch.no_grad():
                features, padding = backbone.local_features(**tensors)
            tensors["mask"] = model.sample_mask(len(features), features.shape[1], padding, torch.Generator())
            expected = outputs_of(model, inputs[modality], tensors["mask"])
        else:
            expected = outputs_of(model, inputs[modality])
        save_file(tensors, root / folder / "inputs.safetensors")
        save_file({k: v.contiguous() for k, v in expected.items()}, root / folder / "expected.safetensors")
        spec[folder] = (modality, auto)
        models[folder] = model
    (root / "spec.json").write_text(json.dumps(spec))
    generator = np.random.default_rng(0)
    np.save(root / "clip.npy", generator.standard_normal(1600).astype(np.float32))
    np.save(root / "image.npy", generator.integers(0, 255, (32, 32, 3)).astype(np.uint8))
    return root, models


@pytest.fixture(scope="module")
def fresh_python(tmp_path_factory):
    """A virtual environment without data2vec_hf: its own python, whose site-packages has one plain path
    line to this environment's site-packages (torch, transformers, ...). A plain path line does not run
    the ``.pth`` files found there, so the editable data2vec_hf install is not importable."""
    root = tmp_path_factory.mktemp("fresh_venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root / "venv")], check=True)
    python = root / "venv" / "bin" / "python"
    purelib = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    here = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    Path(purelib, "main_environment.pth").write_text("\n".join(sorted(here)) + "\n")
    return python


def clean_env(tmp: Path) -> dict[str, str]:
    """No PYTHONPATH or other Python settings from here; offline; a private transformers module cache."""
    keep = ("PATH", "HOME", "LANG", "TMPDIR")
    env = {k: v for k, v in os.environ.items() if k in keep}
    return {
        **env,
        "HF_HUB_OFFLINE": "1",
        "HF_MODULES_CACHE": str(tmp / "modules"),
        "TOKENIZERS_PARALLELISM": "false",
    }


def reference_pipelines(root: Path) -> dict:
    """The same pipelines here, with data2vec_hf imported (its own classes serve the folders)."""
    audio, image = np.load(root / "clip.npy"), np.load(root / "image.npy")

    def probabilities(result):
        return {r["label"]: r["score"] for r in result}

    return {
        "feature-extraction": pipeline("feature-extraction", model=str(root / "text-encoder"))(
            "the quick brown fox", return_tensors=True
        )[0],
        "text-classification": probabilities(
            pipeline("text-classification", model=str(root / "text-classification"))(
                "the lazy dog", top_k=None
            )
        ),
        "audio-classification": probabilities(
            pipeline("audio-classification", model=str(root / "audio-classification"))(
                {"raw": audio, "sampling_rate": 16000}
            )
        ),
        "automatic-speech-recognition": pipeline(
            "automatic-speech-recognition", model=str(root / "audio-ctc")
        )({"raw": audio, "sampling_rate": 16000})["text"],
        "image-classification": probabilities(
            pipeline("image-classification", model=str(root / "vision-classification"))(image, top_k=None)
        ),
    }


def test_every_2_0_class_loads_without_data2vec_hf(exported, fresh_python, tmp_path):
    root, _ = exported
    result = subprocess.run(
        [fresh_python, "-c", FRESH, str(root)],
        capture_output=True,
        text=True,
        timeout=600,
        env=clean_env(tmp_path),
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads(result.stdout.split("REPORT", 1)[1])
    assert report["data2vec_hf_importable"] is False
    for folder, (_, class_name, _) in EXPORTS.items():
        name, module = report["classes"][folder]
        # the folder's own generated code, not this package
        assert (
            name == class_name and module.startswith("transformers_modules.") and "data2vec_hf" not in module
        )
    assert max(report["diffs"].values()) <= REMOTE_TOLERANCE, report["diffs"]
    assert set(report["diffs"]) == {*EXPORTS, "resaved"}
    assert {"modeling_data2vec2_audio.py", "configuration_data2vec2_audio.py"} <= set(report["resaved_files"])

    expected = reference_pipelines(root)
    got = report["pipelines"]
    assert (
        np.abs(np.array(got["feature-extraction"]) - expected["feature-extraction"].numpy()).max()
        <= TOLERANCE
    )
    assert got["automatic-speech-recognition"] == expected["automatic-speech-recognition"]
    for task in ("text-classification", "audio-classification", "image-classification"):
        assert set(got[task]) == set(expected[task]) and len(got[task]) == 3, (task, got[task])
        assert max(abs(got[task][k] - expected[task][k]) for k in got[task]) <= TOLERANCE, task
    # multi-label problem_type: the audio-classification pipeline applies a sigmoid per label
    assert abs(sum(got["audio-classification"].values()) - 1) > 1e-3


def test_generated_files_are_the_package_source(exported):
    root, _ = exported
    files = generate(data2vec_hf.Data2Vec2AudioConfig)
    assert files == generate(data2vec_hf.Data2Vec2AudioConfig)  # deterministic
    modeling, configuration = files["modeling_data2vec2_audio.py"], files["configuration_data2vec2_audio.py"]
    # the folder gets the committed files, byte for byte (which are what the source generates)
    for name in files:
        assert (
            (root / "audio-ctc" / name).read_bytes() == (FOLDER / name).read_bytes() == files[name].encode()
        )
    # layout.py's CPU kernels are not Hub code: its plain counterparts are, under the same names
    for obj in (layout_reference.transpose_contiguous, layout_reference.use_contiguous_conv_layers):
        assert inspect.getsource(obj).strip() in modeling, obj.__name__
    for name in ("WindowConvolution", "TimeMajorFeatureEncoder", "_TransposeContiguous", "as_strided"):
        assert name not in modeling, name
    # one source of truth: definitions are copied verbatim from the package (num_frames from the 1.0 module)
    for obj in (
        data2vec2.gather_positions,
        data2vec2.Decoder,
        num_frames,
        ema.EMATeacher,
        masking.block_mask,
    ):
        assert inspect.getsource(obj).strip() in modeling, obj.__name__
    assert inspect.getsource(data2vec2_audio.linear_softmax_pool).strip() in modeling
    assert "class Data2Vec2AudioConfig(" in configuration and "class Data2Vec2AudioConfig(" not in modeling
    assert "from .configuration_data2vec2_audio import Data2Vec2AudioConfig" in modeling
    assert f'DATA2VEC_HF_VERSION = "{data2vec_hf.__version__}"' in modeling
    assert f"data2vec-hf {data2vec_hf.__version__}" in configuration.splitlines()[0]
    # the package-only remote_code options are left out, and so is everything 1.0-only
    assert "def save_pretrained" not in modeling and "_push_remote_code" not in modeling
    assert "Data2VecAudioForPreTraining" not in modeling
    for config_cls in data2vec_hf.DATA2VEC2_AUTO_CLASSES:
        for name, source in generate(config_cls).items():
            tree = ast.parse(source)
            for node in ast.walk(tree):
                if isinstance(node, ast.ImportFrom) and node.level:
                    assert node.module.startswith("configuration_data2vec2_"), (name, node.module)
                elif isinstance(node, ast.Import | ast.ImportFrom):
                    module = node.module if isinstance(node, ast.ImportFrom) else node.names[0].name
                    top = module.split(".")[0]
                    assert top in ALLOWED_IMPORTS or top in sys.stdlib_module_names, (name, module)


def test_auto_map_and_no_change_without_the_option(exported, tmp_path):
    root, models = exported
    config = json.loads((root / "audio-ctc" / "config.json").read_text())
    assert config["auto_map"] == {
        "AutoConfig": "configuration_data2vec2_audio.Data2Vec2AudioConfig",
        "AutoModel": "modeling_data2vec2_audio.Data2Vec2AudioModel",
        "AutoModelForPreTraining": "modeling_data2vec2_audio.Data2Vec2AudioForPreTraining",
        "AutoModelForCTC": "modeling_data2vec2_audio.Data2Vec2AudioForCTC",
        "AutoModelForAudioClassification": "modeling_data2vec2_audio.Data2Vec2AudioForSequenceClassification",
    }
    assert auto_map(data2vec_hf.Data2Vec2TextConfig)["AutoModelForSequenceClassification"] == (
        "modeling_data2vec2_text.Data2Vec2TextForSequenceClassification"
    )
    models["text-encoder"].save_pretrained(tmp_path / "plain")
    assert not list((tmp_path / "plain").glob("*.py"))
    assert "auto_map" not in json.loads((tmp_path / "plain" / "config.json").read_text())
    # a folder read back (here with data2vec_hf's classes) and saved without the option names no code either
    reloaded = AutoModel.from_pretrained(root / "text-encoder", trust_remote_code=True)
    reloaded.save_pretrained(tmp_path / "again")
    assert "auto_map" not in json.loads((tmp_path / "again" / "config.json").read_text())
    assert not list((tmp_path / "again").glob("*.py"))


AUTOS = {
    "AutoModel": AutoModel,
    "AutoModelForPreTraining": AutoModelForPreTraining,
    "AutoModelForCTC": AutoModelForCTC,
    "AutoModelForAudioClassification": AutoModelForAudioClassification,
    "AutoModelForImageClassification": AutoModelForImageClassification,
    "AutoModelForSequenceClassification": AutoModelForSequenceClassification,
}


def test_remote_code_folders_load_where_data2vec_hf_is_imported(exported):
    """No clash with the registered data2vec2-* model types: with ``trust_remote_code=True`` the Auto
    classes give this package's classes, and the folder's own generated classes load side by side."""
    from transformers.dynamic_module_utils import get_class_from_dynamic_module

    root, _ = exported
    for folder in ("audio-ctc", "vision-classification", "text-pretraining"):
        _, class_name, auto = EXPORTS[folder]
        model = AUTOS[auto].from_pretrained(root / folder, trust_remote_code=True).eval()
        assert type(model) is getattr(data2vec_hf, class_name)
        inputs = load_file(root / folder / "inputs.safetensors")
        mask = inputs.pop("mask", None)
        expected = load_file(root / folder / "expected.safetensors")
        for key, value in outputs_of(model, inputs, mask).items():
            assert (value - expected[key]).abs().max() <= TOLERANCE
        module = f"modeling_data2vec2_{folder.split('-')[0]}"
        remote_cls = get_class_from_dynamic_module(f"{module}.{class_name}", root / folder)
        remote = remote_cls.from_pretrained(root / folder).eval()
        assert remote_cls is not type(model) and remote_cls.__module__.startswith("transformers_modules.")
        for key, value in outputs_of(remote, inputs, mask).items():
            assert (value - expected[key]).abs().max() <= REMOTE_TOLERANCE


def test_remote_code_is_the_package_in_float64(exported):
    """Leaving layout.py's CPU kernels out of the remote code changes rounding only: in float64 the
    remote-code audio models (CNN, positional convolution, decoder) give the package's outputs to 1e-12."""
    from transformers.dynamic_module_utils import get_class_from_dynamic_module

    root, models = exported
    for folder in ("audio-encoder", "audio-pretraining"):
        class_name = EXPORTS[folder][1]
        remote_cls = get_class_from_dynamic_module(f"modeling_data2vec2_audio.{class_name}", root / folder)
        remote = remote_cls.from_pretrained(root / folder).eval().double()
        model = copy.deepcopy(models[folder]).double()
        inputs = load_file(root / folder / "inputs.safetensors")
        mask = inputs.pop("mask", None)
        inputs["input_values"] = inputs["input_values"].double()
        expected = outputs_of(model, inputs, mask)
        got = outputs_of(remote, inputs, mask)
        assert set(got) == set(expected) and "last_hidden_state" in got
        for key, value in got.items():
            torch.testing.assert_close(value, expected[key], rtol=0, atol=1e-12)


def test_push_to_hub_with_remote_code(exported, hub, monkeypatch):  # noqa: F811
    """``push_to_hub(..., remote_code=True)`` uploads the generated files with the weights, in one commit."""
    from huggingface_hub import ModelCard
    from transformers.utils import hub as transformers_hub

    # transformers first reads an existing card from the real Hub's address: start from an empty one
    monkeypatch.setattr(transformers_hub, "create_and_tag_model_card", lambda *a, **k: ModelCard("# card"))
    _, models = exported
    models["vision-classification"].push_to_hub("someone/d2v2-vision", token=DUMMY_TOKEN, remote_code=True)
    (commit,) = hub.commits
    files = commit["files"]
    assert {"modeling_data2vec2_vision.py", "configuration_data2vec2_vision.py", "config.json"} <= set(files)
    assert json.loads(files["config.json"])["auto_map"]["AutoModelForImageClassification"] == (
        "modeling_data2vec2_vision.Data2Vec2VisionForImageClassification"
    )
    assert not getattr(models["vision-classification"], "_push_remote_code", False)


# ------------------------------------------------------------------------------- the committed files


def test_committed_remote_code_is_what_the_source_generates():
    """The files in modeling/remote-code/ are what regenerating writes, to the byte (compared in memory),
    and generating does not depend on the machine: no paths, no dates, the same twice."""
    generated = generate_all()
    assert sorted(generated) == [
        f"{kind}_data2vec2_{modality}.py"
        for kind in ("configuration", "modeling")
        for modality in ("audio", "text", "vision")
    ]
    stale = stale_files(generated, FOLDER)
    assert not stale, f"{stale} out of date: run `make remote-code` and commit the diff"
    assert generate_all() == generated
    here = str(Path(data2vec_hf.__file__).resolve().parent.parent)
    for name, source in generated.items():
        assert here not in source and "\r" not in source and not source.endswith("\n\n"), name


def test_stale_committed_files_are_refused_and_rewritten(exported, tmp_path, monkeypatch, capsys):
    """A committed file that differs by one byte: export refuses it, ``--check`` shows the diff and fails,
    ``--write`` repairs it (and deletes a stray file); all in a copy of the folder."""
    import data2vec_hf.remote_code_cli as cli

    _, models = exported
    folder = tmp_path / "remote-code"
    shutil.copytree(FOLDER, folder)
    target = folder / "modeling_data2vec2_text.py"
    target.write_bytes(target.read_bytes().replace(b"def gather_positions(", b"def gather_positions (", 1))
    (folder / "modeling_data2vec2_speech.py").write_text("# stray\n")
    monkeypatch.setattr(remote_code, "FOLDER", folder)
    monkeypatch.setattr(cli, "FOLDER", folder)

    with pytest.raises(RemoteCodeError, match=r"modeling_data2vec2_text\.py .*`make remote-code`"):
        models["text-encoder"].save_pretrained(tmp_path / "export", remote_code=True)
    models["audio-encoder"].save_pretrained(tmp_path / "audio", remote_code=True)  # other files are fine

    assert remote_code_cli(["--check"]) == 1
    out = capsys.readouterr().out
    assert "-def gather_positions (" in out and "+def gather_positions(" in out and "speech" in out
    assert remote_code_cli(["--write"]) == 0
    assert remote_code_cli(["--check"]) == 0
    assert sorted(p.name for p in folder.iterdir()) == sorted(p.name for p in FOLDER.iterdir())
    assert target.read_bytes() == (FOLDER / target.name).read_bytes()


def test_plain_layout_computes_what_the_cpu_kernels_compute():
    """The remote code's plain convolution helpers (layout_reference.py) against layout.py's CPU ones."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, 37, 16, generator=generator)
    for conv in (nn.Conv1d(16, 16, 5, padding=2, groups=4), nn.Conv1d(16, 8, 4, stride=2, padding=1)):
        torch.testing.assert_close(
            layout_reference.conv_time_major(conv, x), layout.conv_time_major(conv, x), rtol=0, atol=1e-6
        )
    assert torch.equal(layout_reference.transpose_contiguous(x), layout.transpose_contiguous(x))
    module = nn.Linear(2, 2)
    assert layout_reference.use_contiguous_conv_layers(module) is module


# ------------------------------------------------------------------------------ the authoring rules


def closure_of(**sources: str) -> str:
    """The remote code the generator makes for ``Root`` (module ``root``) of a made-up package whose
    modules have these sources (``pkg/<name>.py`` in errors)."""
    modules = {
        name: parse_module(name, textwrap.dedent(source), f"pkg/{name}.py")
        for name, source in sources.items()
    }
    closure = remote_code._Closure(modules)
    closure.add("root", "Root")
    return closure.body()


def test_the_generator_copies_what_follows_the_rules():
    body = closure_of(
        root="""
        '''docstring'''
        import torch
        from .helpers import scale

        LIMIT: int = 3


        class Root:
            def forward(self, x):
                from .helpers import shift

                return shift(scale(x)) + LIMIT
        """,
        helpers="""
        import torch


        def scale(x):
            return torch.as_tensor(x) * 2


        def shift(x):
            return x + 1


        def unused():
            return 0
        """,
        noisy="print('a module nothing is taken from may do as it likes')",
    )
    assert "def scale(x)" in body and "def shift(x)" in body and "LIMIT: int = 3" in body
    assert "unused" not in body and "from .helpers" not in body
    assert "class Root:\n    def forward(self, x):\n        return shift(scale(x)) + LIMIT" in body


RULE_BREAKS = {
    "a module-level call": (
        {"root": "import torch\n\ntorch.manual_seed(0)\n\n\nclass Root:\n    pass\n"},
        r"pkg/root\.py:3: `torch\.manual_seed\(0\)` at module level .*rule 2",
    ),
    "a module-level if": (
        {"root": "X = 1\nif X:\n    X = 2\n\n\nclass Root:\n    y = X\n"},
        r"pkg/root\.py:2: `if X:` .*rule 2",
    ),
    "an attribute assignment": (
        {"root": "class Root:\n    pass\n\n\nRoot.flag = True\n"},
        r"pkg/root\.py:5: .*rule 2",
    ),
    "a name defined twice": (
        {"root": "X = 1\nX = 2\n\n\nclass Root:\n    y = X\n"},
        r"pkg/root\.py:2: X is defined again \(first at line 1; rule 3\)",
    ),
    "an aliased relative import": (
        {
            "root": "from .helpers import scale as s\n\n\nclass Root:\n    f = s\n",
            "helpers": "def scale():\n    pass\n",
        },
        r"pkg/root\.py:1: relative import `scale as s`.*rule 1",
    ),
    "a module import": (
        {"root": "from . import helpers\n\n\nclass Root:\n    f = helpers\n"},
        r"pkg/root\.py:1: only `from \.module import name`.*rule 1",
    ),
    "an aliased relative import in a function": (
        {
            "root": "class Root:\n    def f(self):\n        from .helpers import scale as s\n\n        return s\n",
            "helpers": "def scale():\n    pass\n",
        },
        r"pkg/root\.py:3: relative import `scale as s`.*rule 1",
    ),
    "a name clash between modules": (
        {
            "root": "from .a import f\nfrom .b import g\n\n\nclass Root:\n    h = (f, g)\n",
            "a": "def helper():\n    pass\n\n\ndef f():\n    return helper()\n",
            "b": "X = 1\n\n\ndef helper():\n    pass\n\n\ndef g():\n    return helper()\n",
        },
        r"pkg/b\.py:4: helper is also defined at pkg/a\.py:1.*rule 3",
    ),
    "a re-export": (
        {
            "root": "from .a import f\n\n\nclass Root:\n    g = f\n",
            "a": "from .b import f\n",
            "b": "from torch import f\n",
        },
        r"pkg/a\.py:1: f is imported from \.b, which does not define it \(rule 4",
    ),
    "one name, two imports": (
        {
            "root": "import numpy as np\nfrom .a import f\n\n\nclass Root:\n    g = (f, np)\n",
            "a": "import torch as np\n\n\ndef f():\n    return np\n",
        },
        r"np is bound by `import .* as np` here and by `import .* as np` at pkg/.*rule 4",
    ),
}


@pytest.mark.parametrize("case", RULE_BREAKS)
def test_the_generator_fails_loudly_where_a_rule_is_broken(case):
    sources, message = RULE_BREAKS[case]
    with pytest.raises(RemoteCodeError, match=message):
        closure_of(**sources)


def test_generated_imports_are_checked():
    remote_code._check("import math\nimport torch\nfrom transformers import PreTrainedModel\n", "ok.py")
    with pytest.raises(RemoteCodeError, match=r"x\.py would import scipy\.signal \(line 2; rule 5\)"):
        remote_code._check("import torch\nfrom scipy.signal import lfilter\n", "x.py")
