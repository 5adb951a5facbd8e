"""Source formats with no fairseq reference fixture, built in the test from models we construct:

* data2vec 1.0 vision in BEiT-codebase layout (pretrained with EMA and regression head, ImageNet
  fine-tuned), written with an inverse mapping spelled out here;
* a CTC fine-tuned audio file (``wav2vec_ctc`` around the reference data2vec_audio) with its letter
  dictionary, and a text dictionary + GPT-2 BPE files;
* config objects as fairseq pickles them (``argparse.Namespace``, omegaconf containers), detection
  overrides, and the fairseq comparison of ``--verify`` against a stand-in ``fairseq`` package.
"""

from __future__ import annotations

import argparse
import json
import pickle
import sys
import types
from pathlib import Path

import pytest
import torch
from conftest import REFERENCE_DIR
from data2vec_hf.conversion.checkpoint import load_checkpoint, plain
from data2vec_hf.conversion.cli import main
from data2vec_hf.conversion.mapping import ConversionError, ExportView, KeyMapping
from safetensors.torch import load_file
from transformers import (
    AutoModel,
    AutoModelForCTC,
    AutoModelForImageClassification,
    AutoModelForPreTraining,
    AutoProcessor,
    AutoTokenizer,
    Data2VecVisionConfig,
    Data2VecVisionForImageClassification,
    Data2VecVisionModel,
)
from transformers.models.data2vec.modeling_data2vec_vision import Data2VecVisionRelativePositionBias

AUDIO = Path(REFERENCE_DIR) / "d2v1_audio.pt"
AUDIO_OUTPUTS = Path(REFERENCE_DIR) / "d2v1_audio.outputs.safetensors"
TEXT = Path(REFERENCE_DIR) / "d2v1_text.pt"


def run(capsys, *argv) -> tuple[int, str]:
    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err


def error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, stderr
    return lines[0]


def randomise(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Weights far from their init (LayerNorm gains and biases included), so swaps are visible."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() > 1:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.2)
            else:
                param.copy_(torch.rand(param.shape, generator=generator) * 2 - 0.5)
    return model.eval()


# ------------------------------------------------------------------------------------ BEiT-codebase vision


def beit_layout(model, finetuned: bool) -> dict[str, torch.Tensor]:
    """A transformers Data2VecVision model written out under the BEiT codebase's names."""
    config = model.config
    hf = {k.removeprefix("data2vec_vision."): v for k, v in model.state_dict().items()}
    window = (config.image_size // config.patch_size,) * 2
    index = Data2VecVisionRelativePositionBias.generate_relative_position_index(window)
    out = {
        "cls_token": hf["embeddings.cls_token"],
        "patch_embed.proj.weight": hf["embeddings.patch_embeddings.projection.weight"],
        "patch_embed.proj.bias": hf["embeddings.patch_embeddings.projection.bias"],
    }
    if config.use_mask_token:
        out["mask_token"] = hf["embeddings.mask_token"]
    if config.use_shared_relative_position_bias:
        out["rel_pos_bias.relative_position_bias_table"] = hf[
            "encoder.relative_position_bias.relative_position_bias_table"
        ]
        out["rel_pos_bias.relative_position_index"] = index
    for i in range(config.num_hidden_layers):
        layer, block = f"encoder.layer.{i}.", f"blocks.{i}."
        attention = layer + "attention.attention."
        out[block + "attn.qkv.weight"] = torch.cat(
            [hf[attention + "query.weight"], hf[attention + "key.weight"], hf[attention + "value.weight"]]
        )
        out[block + "attn.q_bias"] = hf[attention + "query.bias"]
        out[block + "attn.v_bias"] = hf[attention + "value.bias"]
        if config.use_relative_position_bias:
            table = attention + "relative_position_bias.relative_position_bias_table"
            out[block + "attn.relative_position_bias_table"] = hf[table]
            out[block + "attn.relative_position_index"] = index
        for ours, theirs in (
            ("layernorm_before", "norm1"),
            ("attention.output.dense", "attn.proj"),
            ("layernorm_after", "norm2"),
            ("intermediate.dense", "mlp.fc1"),
            ("output.dense", "mlp.fc2"),
        ):
            for kind in ("weight", "bias"):
                out[f"{block}{theirs}.{kind}"] = hf[f"{layer}{ours}.{kind}"]
        out[block + "gamma_1"] = hf[layer + "lambda_1"]
        out[block + "gamma_2"] = hf[layer + "lambda_2"]
    if "layernorm.weight" in hf:
        out["norm.weight"], out["norm.bias"] = hf["layernorm.weight"], hf["layernorm.bias"]
    if finetuned:
        out["fc_norm.weight"], out["fc_norm.bias"] = (
            hf["pooler.layernorm.weight"],
            hf["pooler.layernorm.bias"],
        )
        out["head.weight"], out["head.bias"] = hf["classifier.weight"], hf["classifier.bias"]
    return {k: v.clone() for k, v in out.items()}


def vision_config(**overrides) -> Data2VecVisionConfig:
    values = dict(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        image_size=32,
        patch_size=8,
        layer_scale_init_value=0.1,
        layer_norm_eps=1e-6,
        use_mask_token=True,
        use_shared_relative_position_bias=True,
        use_relative_position_bias=False,
        use_mean_pooling=False,
    )
    values.update(overrides)
    return Data2VecVisionConfig(**values)


@pytest.fixture
def pixels():
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))


@pytest.fixture
def beit_pretrained(tmp_path):
    """A BEiT-codebase pretraining file: student, regression head, a *different* EMA teacher, args."""
    student = randomise(Data2VecVisionModel(vision_config()), seed=0)
    teacher = randomise(Data2VecVisionModel(vision_config()), seed=1)
    state = beit_layout(student, finetuned=False)
    state["lm_head.weight"], state["lm_head.bias"] = torch.randn(32, 32), torch.randn(32)
    ema = beit_layout(teacher, finetuned=False)
    ema["lm_head.weight"], ema["lm_head.bias"] = torch.randn(32, 32), torch.randn(32)
    args = argparse.Namespace(
        model="beit_base_patch16_224", target_layers="[0, 1]", l1_beta=2.0, ema_decay=0.9998
    )
    path = tmp_path / "beit_pretrained.pt"
    torch.save({"model": state, "model_ema": ema, "args": args, "epoch": 799, "optimizer": {}}, path)
    return path, student, teacher, state


@torch.no_grad()
def test_beit_pretrained_to_encoder(beit_pretrained, pixels, tmp_path, capsys):
    path, student, _, _ = beit_pretrained
    out = tmp_path / "encoder"
    code, err = run(capsys, "--checkpoint", path, "--output_dir", out)
    assert code == 0, err
    model = AutoModel.from_pretrained(out).eval()
    assert type(model).__name__ == "Data2VecVisionModel"
    assert torch.equal(model(pixels).last_hidden_state, student(pixels).last_hidden_state)
    processor = json.loads((out / "preprocessor_config.json").read_text())
    assert processor["size"] == {"height": 32, "width": 32} and processor["image_mean"] == [0.5, 0.5, 0.5]
    assert "BEiT-codebase" in err


@torch.no_grad()
def test_beit_pretrained_to_pretraining_model(beit_pretrained, pixels, tmp_path, capsys):
    path, student, teacher, state = beit_pretrained
    out = tmp_path / "pretraining"
    code, err = run(capsys, "--checkpoint", path, "--output_dir", out, "--export", "pretraining")
    assert code == 0, err
    model = AutoModelForPreTraining.from_pretrained(out).eval()
    assert type(model).__name__ == "Data2VecVisionForPreTraining"
    assert torch.equal(model.data2vec_vision(pixels).last_hidden_state, student(pixels).last_hidden_state)
    assert torch.equal(model.final_proj.weight, state["lm_head.weight"])
    # the teacher holds model_ema's blocks, not a copy of the student
    theirs = teacher.encoder.layer[1].intermediate.dense.weight
    assert torch.equal(model.teacher.model.encoder.layer[1].intermediate.dense.weight, theirs)
    assert torch.equal(model.teacher.model.layernorm.bias, teacher.layernorm.bias)
    assert model.config.average_top_k_layers == 2 and model.config.loss_beta == 2.0
    assert model.config.ema_end_decay == 0.9998


@torch.no_grad()
def test_beit_finetuned_to_image_classification(pixels, tmp_path, capsys):
    config = vision_config(
        use_mask_token=False,
        use_shared_relative_position_bias=False,
        use_relative_position_bias=True,
        use_mean_pooling=True,
        num_labels=7,
    )
    original = randomise(Data2VecVisionForImageClassification(config))
    path = tmp_path / "beit_finetuned.pt"
    torch.save({"module": beit_layout(original, finetuned=True)}, path)  # deepspeed's key
    out = tmp_path / "classifier"
    code, err = run(capsys, "--checkpoint", path, "--output_dir", out)
    assert code == 0, err
    model = AutoModelForImageClassification.from_pretrained(out).eval()
    assert type(model).__name__ == "Data2VecVisionForImageClassification"
    assert model.config.num_labels == 7 and model.config.use_relative_position_bias
    assert torch.equal(model(pixels).logits, original(pixels).logits)
    # the bare encoder of the same file
    code, err = run(capsys, "--checkpoint", path, "--output_dir", tmp_path / "enc", "--export", "encoder")
    assert code == 0, err
    encoder = AutoModel.from_pretrained(tmp_path / "enc").eval()
    assert torch.equal(encoder(pixels).last_hidden_state, original.data2vec_vision(pixels).last_hidden_state)


def test_beit_strictness(beit_pretrained, tmp_path, capsys):
    _, _, _, state = beit_pretrained
    cases = {
        "unknown": (
            {**state, "blocks.0.attn.extra_scale": torch.ones(4)},
            "no mapping: blocks.0.attn.extra_scale",
        ),
        "missing": (
            {k: v for k, v in state.items() if k != "blocks.1.norm2.weight"},
            "encoder.layer.1.layernorm_after.weight",
        ),
        "index": (
            {**state, "rel_pos_bias.relative_position_index": torch.zeros(17, 17, dtype=torch.long)},
            "relative_position_index differs",
        ),
        "qkv": (
            {**state, "blocks.0.attn.qkv.weight": torch.zeros(95, 32)},
            "blocks.0.attn.qkv.weight has shape (95, 32)",
        ),
    }
    for name, (broken, expected) in cases.items():
        path = tmp_path / f"{name}.pt"
        torch.save({"model": broken}, path)
        code, err = run(capsys, "--checkpoint", path, "--output_dir", tmp_path / f"out-{name}")
        assert code == 2, name
        assert expected in error_line(err), (name, err)
        assert not (tmp_path / f"out-{name}").exists()


def test_beit_heads_need_a_hint_without_relative_positions(tmp_path, capsys):
    config = vision_config(use_shared_relative_position_bias=False, use_absolute_position_embeddings=True)
    model = randomise(Data2VecVisionModel(config))
    state = beit_layout(model, finetuned=False)
    state["pos_embed"] = model.embeddings.position_embeddings.detach().clone()
    path = tmp_path / "abs.pt"
    torch.save({"model": state}, path)
    code, err = run(capsys, "--checkpoint", path, "--output_dir", tmp_path / "a")
    assert code == 2 and "--num_attention_heads" in error_line(err)
    code, err = run(
        capsys, "--checkpoint", path, "--output_dir", tmp_path / "b", "--num_attention_heads", "4"
    )
    assert code == 0, err
    converted = AutoModel.from_pretrained(tmp_path / "b").eval()
    pixels = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(converted(pixels).last_hidden_state, model(pixels).last_hidden_state)


# ------------------------------------------------------------------------------------------- audio CTC

LETTERS = ["|", "E", "T", "A", "O", "N"]


@pytest.fixture
def ctc_checkpoint(tmp_path):
    """A ``wav2vec_ctc`` file around the reference data2vec_audio model, as fairseq's fine-tuning
    writes it (pretraining modules removed), with a letter dictionary."""
    pretrained = torch.load(AUDIO, weights_only=True)
    generator = torch.Generator().manual_seed(0)
    state = {
        f"w2v_encoder.w2v_model.{k}": v
        for k, v in pretrained["model"].items()
        if k != "_ema" and not k.startswith("final_proj.")
    }
    num_labels = 4 + len(LETTERS)
    state["w2v_encoder.proj.weight"] = torch.randn(num_labels, 32, generator=generator)
    state["w2v_encoder.proj.bias"] = torch.randn(num_labels, generator=generator)
    state["w2v_encoder.proj.bias"][1:4] = -100.0  # like a trained model: never <pad>, </s>, <unk>
    cfg = {
        "model": {
            "_name": "wav2vec_ctc",
            "w2v_path": "/somewhere/pretrained.pt",
            "apply_mask": True,
            "mask_prob": 0.5,
            "mask_length": 10,
            "mask_channel_prob": 0.25,
            "mask_channel_length": 64,
            "layerdrop": 0.1,
            "final_dropout": 0.0,
            "w2v_args": {"model": pretrained["cfg"]["model"], "task": pretrained["cfg"]["task"]},
        },
        "task": {"_name": "audio_finetuning", "normalize": False, "labels": "ltr", "sample_rate": 16000},
        "criterion": {"_name": "ctc", "zero_infinity": True},
    }
    path = tmp_path / "ctc.pt"
    torch.save({"args": None, "cfg": cfg, "model": state}, path)
    dictionary = tmp_path / "dict.ltr.txt"
    dictionary.write_text("".join(f"{letter} {1000 - i}\n" for i, letter in enumerate(LETTERS)))
    return path, dictionary, state


@torch.no_grad()
def test_ctc_checkpoint_transcribes(ctc_checkpoint, tmp_path, capsys):
    path, dictionary, state = ctc_checkpoint
    out = tmp_path / "ctc"
    code, err = run(
        capsys, "--checkpoint", path, "--output_dir", out, "--dict", dictionary, "--verify", AUDIO_OUTPUTS
    )
    assert code == 0, err
    vocab = json.loads((out / "vocab.json").read_text())
    assert vocab == {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, **{c: 4 + i for i, c in enumerate(LETTERS)}}

    model = AutoModelForCTC.from_pretrained(out).eval()
    processor = AutoProcessor.from_pretrained(out)
    assert type(model).__name__ == "Data2VecAudioForCTC"
    assert model.config.pad_token_id == 0 and model.config.vocab_size == 10
    assert model.config.mask_time_prob == 0.5 and model.config.ctc_zero_infinity
    ref = load_file(AUDIO_OUTPUTS)
    # fairseq: logits = w2v_encoder.proj(encoder output); the encoder output was recorded by fairseq
    expected = ref["features.x"] @ state["w2v_encoder.proj.weight"].T + state["w2v_encoder.proj.bias"]
    inputs = processor(ref["source"].numpy(), sampling_rate=16000, return_tensors="pt")
    logits = model(**inputs).logits
    assert (logits - expected).abs().max() < 1e-4

    # fairseq-style greedy CTC decoding: collapse repeats, drop the blank (index 0), '|' separates words
    symbols = ["<s>", "<pad>", "</s>", "<unk>", *LETTERS]
    for row, ids in zip(processor.batch_decode(logits.argmax(-1)), logits.argmax(-1).tolist()):
        collapsed = [i for j, i in enumerate(ids) if i != 0 and (j == 0 or ids[j - 1] != i)]
        letters = "".join(symbols[i] for i in collapsed)
        words = " ".join(w for w in letters.split("|") if w)
        assert row == words and len(words.replace(" ", "")) > 3
    card = (out / "README.md").read_text()
    assert "AutoModelForCTC" in card and "batch_decode" in card


def test_ctc_without_or_with_a_wrong_dictionary(ctc_checkpoint, tmp_path, capsys):
    path, dictionary, _ = ctc_checkpoint
    code, err = run(capsys, "--checkpoint", path, "--output_dir", tmp_path / "a")
    assert code == 0, err
    assert not (tmp_path / "a" / "vocab.json").exists()
    assert "no tokenizer written" in (tmp_path / "a" / "README.md").read_text()

    short = tmp_path / "short.txt"
    short.write_text("E 3\nT 2\n")
    code, err = run(capsys, "--checkpoint", path, "--output_dir", tmp_path / "b", "--dict", short)
    assert code == 2 and "output projection has 10 rows" in error_line(err)
    assert not (tmp_path / "b").exists()

    code, err = run(capsys, "--checkpoint", path, "--output_dir", tmp_path / "c", "--export", "pretraining")
    assert code == 2 and "no regression head" in error_line(err)

    code, err = run(capsys, "--checkpoint", path, "--output_dir", tmp_path / "d", "--export", "encoder")
    assert code == 0, err
    ref = load_file(AUDIO_OUTPUTS)
    with torch.no_grad():
        hidden = AutoModel.from_pretrained(tmp_path / "d").eval()(ref["source"]).last_hidden_state
    assert (hidden - ref["features.x"]).abs().max() < 1e-4


# ---------------------------------------------------------------------------------------- text tokenizer

# a byte-level GPT-2 style BPE: ids in GPT-2 order; fairseq's dict.txt lists them in its own order
GPT2_TOKENS = [
    "h",
    "e",
    "l",
    "o",
    "Ġ",
    "w",
    "r",
    "d",
    "he",
    "ll",
    "hell",
    "hello",
    "Ġw",
    "or",
    "Ġwor",
    "Ġworld",
]
GPT2_TOKENS += ["ld", "!", "x", "Ġx"]
MERGES = ["h e", "l l", "he ll", "hell o", "Ġ w", "o r", "Ġw or", "l d", "Ġwor ld", "Ġ x"]


@pytest.fixture
def bpe_files(tmp_path):
    encoder = {token: i for i, token in enumerate(GPT2_TOKENS)}
    (tmp_path / "encoder.json").write_text(json.dumps(encoder))
    (tmp_path / "vocab.bpe").write_text("#version: 0.2\n" + "\n".join(MERGES) + "\n")
    order = list(range(len(GPT2_TOKENS)))
    torch.manual_seed(0)
    order = [order[i] for i in torch.randperm(len(order)).tolist()]  # fairseq's (frequency) order
    (tmp_path / "dict.txt").write_text("".join(f"{gpt2_id} {100 - n}\n" for n, gpt2_id in enumerate(order)))
    return tmp_path / "dict.txt", tmp_path / "encoder.json", tmp_path / "vocab.bpe", order


@torch.no_grad()
def test_text_tokenizer_from_dictionary_and_gpt2_bpe(bpe_files, tmp_path, capsys):
    dict_txt, encoder_json, vocab_bpe, order = bpe_files
    out = tmp_path / "text"
    args = ("--dict", dict_txt, "--encoder_json", encoder_json, "--vocab_bpe", vocab_bpe)
    code, err = run(capsys, "--checkpoint", TEXT, "--output_dir", out, *args)
    assert code == 0, err
    tokenizer = AutoTokenizer.from_pretrained(out)
    text = "hello world!"
    # independently: GPT-2 BPE ids with the original vocabulary, then through the dictionary
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    gpt2 = Tokenizer(models.BPE(json.loads(encoder_json.read_text()), [tuple(m.split()) for m in MERGES]))
    gpt2.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    gpt2.decoder = decoders.ByteLevel()
    gpt2_ids = gpt2.encode(text).ids
    assert gpt2_ids == [GPT2_TOKENS.index("hello"), GPT2_TOKENS.index("Ġworld"), GPT2_TOKENS.index("!")]
    expected = [0, *(4 + order.index(i) for i in gpt2_ids), 2]
    ids = tokenizer(text)["input_ids"]
    assert ids == expected
    assert tokenizer.mask_token_id == 24 and tokenizer.pad_token_id == 1
    assert tokenizer.decode(ids, skip_special_tokens=True) == text
    model = AutoModel.from_pretrained(out).eval()
    assert model(torch.tensor([ids])).last_hidden_state.shape == (1, len(ids), 32)


def test_text_tokenizer_needs_all_files_and_matching_size(bpe_files, tmp_path, capsys):
    dict_txt, encoder_json, vocab_bpe, _ = bpe_files
    code, err = run(capsys, "--checkpoint", TEXT, "--output_dir", tmp_path / "a", "--dict", dict_txt)
    assert code == 2 and "needs all three" in error_line(err)
    longer = tmp_path / "longer.txt"
    longer.write_text(dict_txt.read_text() + "madeupword0000 0\n")
    args = ("--dict", longer, "--encoder_json", encoder_json, "--vocab_bpe", vocab_bpe)
    code, err = run(capsys, "--checkpoint", TEXT, "--output_dir", tmp_path / "b", *args)
    assert code == 2 and "embedding has 25 rows" in error_line(err)


# ------------------------------------------------------------------------------ pickled configs, overrides


def _resave(tmp_path, name, **changes) -> Path:
    checkpoint = torch.load(AUDIO, weights_only=True)
    checkpoint.update(changes)
    path = tmp_path / name
    torch.save(checkpoint, path)
    return path


def test_legacy_namespace_args(tmp_path, capsys):
    """Old fairseq files carry a flat argparse.Namespace in `args` and no `cfg`."""
    model_cfg = torch.load(AUDIO, weights_only=True)["cfg"]["model"]
    flat = {k: v for k, v in model_cfg.items() if k != "_name"}
    args = argparse.Namespace(arch="data2vec_audio", task="audio_pretraining", normalize=True, **flat)
    path = _resave(tmp_path, "legacy.pt", cfg=None, args=args)
    out = tmp_path / "out"
    code, err = run(capsys, "--checkpoint", path, "--output_dir", out, "--verify", AUDIO_OUTPUTS)
    assert code == 0, err
    assert json.loads((out / "preprocessor_config.json").read_text())["do_normalize"] is True


class _FakeOmegaConf:
    """Classes named like omegaconf's, pickling their state the way omegaconf 2.x does
    (``_metadata``/``_parent``/``_content`` and value nodes with ``_val``)."""

    @staticmethod
    def install(monkeypatch):
        modules = {
            name: types.ModuleType(name)
            for name in ("omegaconf", "omegaconf.dictconfig", "omegaconf.nodes", "omegaconf.base")
        }

        class Metadata:
            def __init__(self, key):
                self.ref_type, self.object_type, self.optional, self.key = typing_any, dict, True, key
                self.flags, self.resolver_cache = {}, __import__("collections").defaultdict(dict)

        class DictConfig:
            def __init__(self, content, key=None):
                self._metadata, self._parent = Metadata(key), None
                self._content = {k: wrap(v, k) for k, v in content.items()}

            def __getstate__(self):
                return {"_metadata": self._metadata, "_parent": self._parent, "_content": self._content}

        class AnyNode:
            def __init__(self, value, key):
                self._val, self._metadata, self._parent = value, Metadata(key), None

            def __getstate__(self):
                return {"_val": self._val, "_metadata": self._metadata, "_parent": self._parent}

        import typing

        typing_any = typing.Any

        def wrap(value, key):
            return DictConfig(value, key) if isinstance(value, dict) else AnyNode(value, key)

        for cls, module in (
            (DictConfig, "omegaconf.dictconfig"),
            (AnyNode, "omegaconf.nodes"),
            (Metadata, "omegaconf.base"),
        ):
            cls.__module__, cls.__qualname__ = module, cls.__name__
            setattr(modules[module], cls.__name__, cls)
        for name, module in modules.items():
            monkeypatch.setitem(sys.modules, name, module)
        return DictConfig


def test_omegaconf_config_objects_load_without_omegaconf(tmp_path, capsys, monkeypatch):
    cfg = torch.load(AUDIO, weights_only=True)["cfg"]
    with monkeypatch.context() as patch:
        DictConfig = _FakeOmegaConf.install(patch)
        path = _resave(tmp_path, "omega.pt", cfg=DictConfig({"model": cfg["model"], "task": cfg["task"]}))
    assert "omegaconf" not in sys.modules or not hasattr(sys.modules["omegaconf"], "DictConfig")
    loaded = load_checkpoint(path)
    assert plain(loaded["cfg"])["model"] == cfg["model"]
    code, err = run(capsys, "--checkpoint", path, "--output_dir", tmp_path / "out", "--verify", AUDIO_OUTPUTS)
    assert code == 0, err


def test_other_globals_are_refused_by_name(tmp_path):
    path = tmp_path / "eval.pt"

    class Sneaky:
        def __reduce__(self):
            return (eval, ("1 + 1",))

    torch.save({"model": {}, "cfg": Sneaky()}, path)
    with pytest.raises(ConversionError, match=r"`builtins\.eval`|`eval`"):
        load_checkpoint(path)
    # a plain pickle is not a torch checkpoint
    raw = tmp_path / "raw.pt"
    raw.write_bytes(pickle.dumps({"a": 1}, protocol=4))
    with pytest.warns(UserWarning), pytest.raises(ConversionError, match="not a torch checkpoint"):
        load_checkpoint(raw)


def test_training_statistics_and_config_types_are_read_inertly(tmp_path, capsys, monkeypatch):
    """numpy scalars in ``extra_state`` and fairseq config classes referenced by a pickled config load
    as inert stand-ins; a fairseq *model* class is refused by name."""
    import numpy as np

    module = types.ModuleType("fairseq.dataclass.configs")

    class CommonConfig:  # a structured-config type, referenced from omegaconf metadata
        pass

    class Data2VecAudioModel:  # code, not configuration
        pass

    for cls, owner in (
        (CommonConfig, module.__name__),
        (Data2VecAudioModel, "fairseq.models.data2vec_audio"),
    ):
        cls.__module__, cls.__qualname__ = owner, cls.__name__
    module.CommonConfig = CommonConfig
    models = types.ModuleType("fairseq.models.data2vec_audio")
    models.Data2VecAudioModel = Data2VecAudioModel
    with monkeypatch.context() as patch:
        for name in ("fairseq", "fairseq.dataclass", "fairseq.models"):
            patch.setitem(sys.modules, name, types.ModuleType(name))
        patch.setitem(sys.modules, module.__name__, module)
        patch.setitem(sys.modules, models.__name__, models)
        extra = {"metrics": {"loss": np.float64(1.5), "steps": np.arange(3)}, "config_type": CommonConfig}
        ok = _resave(tmp_path, "stats.pt", extra_state=extra)
        bad = _resave(tmp_path, "model_class.pt", extra_state={"model_class": Data2VecAudioModel})
    code, err = run(capsys, "--checkpoint", ok, "--output_dir", tmp_path / "a", "--verify", AUDIO_OUTPUTS)
    assert code == 0, err
    code, err = run(capsys, "--checkpoint", bad, "--output_dir", tmp_path / "b")
    assert code == 2 and "`fairseq.models.data2vec_audio.Data2VecAudioModel`" in error_line(err)
    assert not (tmp_path / "b").exists()


def test_overrides_for_a_file_without_config(tmp_path, capsys):
    model_cfg = torch.load(AUDIO, weights_only=True)["cfg"]["model"]
    path = _resave(tmp_path, "stripped.pt", cfg=None)
    code, err = run(capsys, "--checkpoint", path, "--output_dir", tmp_path / "a")
    assert code == 2 and "not a data2vec checkpoint" in error_line(err)
    config = tmp_path / "model.json"
    config.write_text(json.dumps(model_cfg))
    argv = ("--checkpoint", path, "--output_dir", tmp_path / "b", "--modality", "audio", "--version", "1")
    code, err = run(capsys, *argv, "--model_config", config, "--verify", AUDIO_OUTPUTS)
    assert code == 0, err
    code, err = run(capsys, "--checkpoint", AUDIO, "--output_dir", tmp_path / "c", "--version", "2")
    assert code == 2 and "'data2vec_audio' is not a data2vec 2.0 model" in error_line(err)


def test_export_view_is_strict():
    mapping = KeyMapping(rules=[(r"a\.(\d+)", r"model.a.\1"), (r"head", "head.weight")], drop=[r"junk"])
    view = ExportView(mapping, rename=[("model.", "")], drop_targets=[r"head\..*"], drop_sources=[r"ema/.*"])
    assert view.target_of("a.3") == "a.3"
    assert (
        view.target_of("head") is None and view.target_of("junk") is None and view.target_of("ema/x") is None
    )
    with pytest.raises(KeyError):
        view.target_of("b")
    bare = ExportView(mapping, rename=[("model.", "")])
    with pytest.raises(KeyError):  # a target neither kept nor dropped
        bare.target_of("head")
    nested = mapping.with_source_prefix(r"outer\.")
    assert nested.target_of("outer.a.1") == "model.a.1" and nested.target_of("outer.junk") is None


# ----------------------------------------------------------------------------------- fairseq comparison


def _fake_fairseq(monkeypatch, offset: float):
    """A stand-in ``fairseq`` whose model returns what the real one recorded (plus ``offset``)."""
    ref = load_file(AUDIO_OUTPUTS)

    class Model(torch.nn.Module):
        def extract_features(self, source, padding_mask=None, mask=False):
            if torch.equal(source, ref["source"]):
                return {"x": ref["features.x"] + offset}
            return {"x": torch.zeros(len(source), 799, 32)}  # not what the model computes

    calls = []

    def load_model_ensemble_and_task(paths):
        calls.append(torch.serialization.get_safe_globals())
        return [Model()], None, None

    package = types.ModuleType("fairseq")
    utils = types.ModuleType("fairseq.checkpoint_utils")
    utils.load_model_ensemble_and_task = load_model_ensemble_and_task
    package.checkpoint_utils = utils
    monkeypatch.setitem(sys.modules, "fairseq", package)
    monkeypatch.setitem(sys.modules, "fairseq.checkpoint_utils", utils)
    return calls


def test_verify_compares_with_fairseq_when_importable(tmp_path, capsys, monkeypatch):
    calls = _fake_fairseq(monkeypatch, offset=0.0)
    out = tmp_path / "ok"
    code, err = run(capsys, "--checkpoint", AUDIO, "--output_dir", out, "--verify", AUDIO_OUTPUTS)
    assert code == 0, err
    assert len(calls) == 1 and argparse.Namespace in calls[0]  # fairseq reads under our allowlist
    assert "fairseq features.x" in (out / "README.md").read_text()

    _fake_fairseq(monkeypatch, offset=1e-2)
    code, err = run(
        capsys, "--checkpoint", AUDIO, "--output_dir", tmp_path / "bad", "--verify", AUDIO_OUTPUTS
    )
    assert code == 2 and "disagrees with fairseq" in error_line(err)
    assert not (tmp_path / "bad").exists()
    # --verify without a reference: fairseq on random inputs of the right length
    code, err = run(capsys, "--checkpoint", AUDIO, "--output_dir", tmp_path / "bare", "--verify")
    assert code == 2 and "fairseq features.x" in error_line(err)
    assert not (tmp_path / "bare").exists()


def test_verify_without_fairseq_or_reference_compares_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "fairseq", None)  # import fails
    code, err = run(capsys, "--checkpoint", AUDIO, "--output_dir", tmp_path / "o", "--verify")
    assert code == 0 and "fairseq is not importable" in err and "nothing was compared" in err
