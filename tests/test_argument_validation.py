"""Every flag is validated before any work: a numeric flag of the pretraining scripts or of data2vec-probe
that is not finite, out of range, or set with flags it cannot work with ends in exit status 2 and a
message naming it (argparse's usage, then the message); a data source with nothing usable in it ends the
same way, naming the file, without a traceback."""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from data2vec_hf.evaluation import cli
from data2vec_hf.pretraining import pretrain_audio, pretrain_text, pretrain_vision, trainer
from data2vec_hf.pretraining.arguments import PRETRAINING_RULES, build_parser
from data2vec_hf.pretraining.data import (
    DataError,
    build_image_transform,
    load_raw_dataset,
    prepare_audio_dataset,
    prepare_image_dataset,
    prepare_text_dataset,
    train_bpe_tokenizer,
)

sys.path.insert(0, str(Path(__file__).parent))
from test_pretraining_scripts import ROOT, TINY_TEXT  # noqa: E402
from test_training_fidelity import reset_accelerate  # noqa: E402

SPECS = {"audio": pretrain_audio.SPEC, "vision": pretrain_vision.SPEC, "text": pretrain_text.SPEC}
TRIED = ("0", "-1", "nan", "inf")

# (flag, value) pairs that are meaningful and so accepted, with the reason; every other value of TRIED is
# refused, by argparse (a non-integer for an int flag, a choice) or by the validation
ACCEPTED = {
    ("preprocessing_num_workers", "0"): "datasets then preprocesses in the main process",
    ("dataloader_num_workers", "0"): "the batches are loaded in the main process",
    ("weight_decay", "0"): "no weight decay",
    ("adam_beta1", "0"): "AdamW without momentum is well defined",
    ("adam_beta2", "0"): "AdamW without second-moment averaging is well defined",
    ("max_grad_norm", "0"): "no gradient clipping",
    ("num_warmup_steps", "0"): "no warmup",
    ("seed", "0"): "a seed like any other",
    ("min_length_seconds", "0"): "only the model's receptive field bounds the clips",
    ("max_tokens", "0"): "no limit on the samples of a batch",
    ("color_jitter", "0"): "no colour jitter (the data2vec 2.0 recipe)",
    ("hflip", "0"): "never flip",
    ("eval_steps", "0"): "evaluate only after the last update",
    ("eval_seed", "0"): "a seed like any other",
}
PROBE_ACCEPTED = {("seed", "0"): "a seed like any other"}


def numeric_flags(parser) -> list[str]:
    """The destinations of the parser's int and float flags."""
    return [a.dest for a in parser._actions if a.type in (int, float) and a.option_strings]


class Reached(Exception):
    """The command got past its validation (raised in place of its first real work)."""


class StandInLoop:
    """Stands in for the training loop: a run that builds it passed validation."""

    def __init__(self, spec, args):
        raise Reached


def outcome(main, argv, capsys) -> str:
    """``"accepted"``, or the error line of a refusal (exit status 2)."""
    try:
        main(argv)
    except Reached:
        return "accepted"
    except SystemExit as exit:
        err = capsys.readouterr().err
        assert exit.code == 2, err
        return err.strip().splitlines()[-1]
    raise AssertionError(f"{argv}: neither refused nor reaching the work")


def check_every_value(flags, main, base, accepted, capsys) -> list[str]:
    """Try every value of TRIED on every flag; return what went wrong."""
    problems = []
    for flag in flags:
        for value in TRIED:
            result = outcome(main, [*base, f"--{flag}", value], capsys)
            meaningful = (flag, value) in accepted
            if result == "accepted" and not meaningful:
                problems.append(f"--{flag} {value} was accepted")
            elif result != "accepted" and meaningful:
                problems.append(f"--{flag} {value} was refused ({result}): {accepted[flag, value]}")
            elif result != "accepted" and not re.search(rf"--{flag}\b", result):
                problems.append(f"--{flag} {value}: the error does not name the flag: {result}")
    return problems


@pytest.mark.parametrize("modality", SPECS)
def test_every_numeric_flag_has_a_rule_and_refuses_meaningless_values(
    modality, monkeypatch, capsys, tmp_path
):
    """0, -1, nan and inf on every int/float flag of a pretraining script (the shared, the modality's and
    the online-evaluation flags): refused naming the flag, unless listed in ACCEPTED."""
    flags = numeric_flags(build_parser(SPECS[modality]))
    assert {"learning_rate", "eval_knn_k"} <= set(flags)  # (the enumeration finds them)
    assert [f for f in flags if f not in PRETRAINING_RULES] == [], "numeric flags without a rule"
    every = {f for spec in SPECS.values() for f in numeric_flags(build_parser(spec))}
    assert set(PRETRAINING_RULES) <= every, f"rules of no flag: {set(PRETRAINING_RULES) - every}"
    monkeypatch.setattr(trainer, "PretrainingLoop", StandInLoop)
    # an eval source, so that the --eval_* flags are checked against their own rules; a schedule that takes
    # --num_warmup_steps (audio 1.0's recipe is tri_stage, whose warmup is a ratio)
    base = ["--output_dir", str(tmp_path / "out"), "--eval_embedded", "--lr_scheduler_type", "cosine"]
    assert outcome(lambda argv: trainer.run(SPECS[modality], argv), base, capsys) == "accepted"
    problems = check_every_value(
        flags, lambda argv: trainer.run(SPECS[modality], argv), base, ACCEPTED, capsys
    )
    assert problems == []
    assert not (tmp_path / "out").exists()  # refused before any work


def test_every_numeric_flag_of_the_probe_has_a_rule_and_refuses_meaningless_values(monkeypatch, capsys):
    flags = numeric_flags(cli.build_parser())
    assert "knn_k" in flags and sorted(flags) == sorted(cli.PROBE_RULES)

    def load_encoder(path, device):
        raise Reached

    monkeypatch.setattr(cli, "load_encoder", load_encoder)
    base = ["some/model", "--embedded"]
    assert outcome(cli.main, base, capsys) == "accepted"
    assert check_every_value(flags, cli.main, base, PROBE_ACCEPTED, capsys) == []


def test_the_recipe_defaults_are_validated_after_the_fill(monkeypatch, capsys, tmp_path):
    """A flag left to the recipe is checked with the recipe's value (here a broken recipe)."""
    defaults = {1: pretrain_text.SPEC.defaults[1] | {"learning_rate": float("nan")}}
    spec = dataclasses.replace(pretrain_text.SPEC, defaults=defaults)
    monkeypatch.setattr(trainer, "PretrainingLoop", StandInLoop)
    argv = ["--output_dir", str(tmp_path)]
    assert outcome(lambda a: trainer.run(spec, a), argv, capsys).endswith(
        "error: --learning_rate nan: must be a finite number > 0"
    )
    argv += ["--learning_rate", "1e-4"]  # an explicit flag wins over the recipe
    assert outcome(lambda a: trainer.run(spec, a), argv, capsys) == "accepted"


# (modality, flags that cannot work together, the error, the nearest flags that can: accepted, or None)
COMBINATIONS = [
    ("text", ["--lr_scheduler_type", "linear", "--max_train_steps", "10", "--num_warmup_steps", "11"],
     "--num_warmup_steps 11: must not exceed --max_train_steps 10",
     ["--lr_scheduler_type", "linear", "--max_train_steps", "10", "--num_warmup_steps", "10"]),
    ("audio", ["--num_warmup_steps", "5"], "--num_warmup_steps 5: not used by --lr_scheduler_type tri_stage",
     ["--lr_scheduler_type", "tri_stage", "--tri_stage_ratios", "0.05,0.9,0.05"]),
    ("text", ["--lr_scheduler_type", "tri_stage", "--tri_stage_ratios", "0.5,0.5"],
     "--tri_stage_ratios 0.5,0.5: must be three fractions in [0, 1] (warmup, hold, decay) summing to 1",
     ["--lr_scheduler_type", "tri_stage", "--tri_stage_ratios", "0,1,0"]),
    ("text", ["--lr_scheduler_type", "tri_stage", "--tri_stage_ratios", "0.1,0.1,0.1"],
     "--tri_stage_ratios 0.1,0.1,0.1: must be three fractions", None),
    ("text", ["--lr_scheduler_type", "tri_stage", "--tri_stage_ratios", "nan,0.5,0.5"],
     "--tri_stage_ratios nan,0.5,0.5: must be three fractions", None),
    ("text", ["--lr_scheduler_type", "tri_stage", "--tri_stage_ratios", "1.5,-0.5,0"],
     "--tri_stage_ratios 1.5,-0.5,0: must be three fractions", None),
    ("text", ["--lr_scheduler_type", "cosine", "--tri_stage_ratios", "0.1,0.8,0.1"],
     "--tri_stage_ratios 0.1,0.8,0.1: only used with --lr_scheduler_type tri_stage", None),
    ("text", ["--lr_scheduler_type", "reduce_lr_on_plateau"],
     "--lr_scheduler_type reduce_lr_on_plateau: must be one of tri_stage, linear, cosine",
     ["--lr_scheduler_type", "inverse_sqrt"]),
    ("text", ["--streaming", "--max_train_samples", "10"], "--max_train_samples 10: not supported with --streaming",
     ["--streaming", "--seed", "0", "--max_grad_norm", "0", "--dataloader_num_workers", "0"]),
    ("text", ["--max_train_samples", "2", "--gradient_accumulation_steps", "4"],
     "--max_train_samples 2: an update needs at least one example for each of the "
     "--gradient_accumulation_steps 4 micro-batches",
     ["--max_train_samples", "4", "--gradient_accumulation_steps", "4"]),
    ("audio", ["--min_length_seconds", "5", "--max_length_seconds", "2"],
     "--min_length_seconds 5.0: must not exceed --max_length_seconds 2.0",
     ["--min_length_seconds", "2", "--max_length_seconds", "2"]),
    ("audio", ["--max_tokens", "1000"],
     "--max_tokens 1000: must be 0 (no limit) or at least --min_length_seconds x --sampling_rate = 32000 samples",
     ["--max_tokens", "1000", "--no-group_by_length"]),  # batches of a count of clips: --max_tokens is unused
    ("text", ["--train_dir", "a", "--train_file", "b"], "--train_dir and --train_file: give only one of",
     ["--train_file", "b"]),
    ("text", ["--eval_dir", "a", "--eval_embedded"], "--eval_dir and --eval_embedded: give only one of",
     ["--eval_dir", "a"]),
    ("text", ["--eval_knn_k", "5"],
     "--eval_knn_k 5: only used with --eval_dataset_name or --eval_dir or --eval_file or --eval_embedded",
     ["--eval_file", "x.csv", "--eval_knn_k", "5"]),
    ("text", ["--eval_at_start"], "--eval_at_start: only used with --eval_dataset_name",
     ["--eval_at_start", "--eval_embedded"]),
    ("text", ["--eval_embedded", "--eval_dataset_config_name", "x"],
     "--eval_dataset_config_name x: only used with --eval_dataset_name",
     ["--eval_dataset_name", "d", "--eval_dataset_config_name", "x"]),
    ("text", ["--dataset_config_name", "x"], "--dataset_config_name x: only used with --dataset_name",
     ["--dataset_name", "d", "--dataset_config_name", "x"]),
    ("text", ["--torch_compile_mode", "max-autotune"], "--torch_compile_mode max-autotune: only used with --torch_compile",
     ["--torch_compile", "--torch_compile_mode", "max-autotune"]),
    ("text", ["--hub_token", "x"], "--hub_token x: only used with --push_to_hub", ["--push_to_hub", "--hub_token", "x"]),
    ("vision", ["--crop_min_scale", "1.5"], "--crop_min_scale 1.5: must be a number in (0, 1]", ["--crop_min_scale", "1"]),
    ("vision", ["--hflip", "2"], "--hflip 2.0: must be a number in [0, 1] (a probability)", ["--hflip", "1"]),
    ("text", ["--adam_beta2", "1"], "--adam_beta2 1.0: must be a number in [0, 1)", ["--adam_beta2", "0.999"]),
    ("text", ["--bpe_vocab_size", "100"], "--bpe_vocab_size 100: must be an integer >= 261", ["--bpe_vocab_size", "261"]),
]  # fmt: skip


@pytest.mark.parametrize("modality, refused, message, accepted", COMBINATIONS)
def test_combinations_that_cannot_work_are_refused(
    modality, refused, message, accepted, monkeypatch, capsys, tmp_path
):
    """Refused with the message; the nearest combination that works is accepted (no rule refuses too much)."""
    monkeypatch.setattr(trainer, "PretrainingLoop", StandInLoop)

    def run(argv):
        return outcome(
            lambda a: trainer.run(SPECS[modality], a), ["--output_dir", str(tmp_path), *argv], capsys
        )

    assert f"error: {message}" in run(refused)
    if accepted is not None:
        assert run(accepted) == "accepted"


@pytest.mark.parametrize(
    "argv, message",
    [
        ([], "give one of --embedded, --dataset_name, --data_dir, --data_file"),
        (["--embedded", "--data_dir", "d"], "--embedded and --data_dir: give only one of"),
        (
            ["--embedded", "--dataset_config_name", "x"],
            "--dataset_config_name x: only used with --dataset_name",
        ),
        (["--embedded", "--knn_temperature", "nan"], "--knn_temperature nan: must be a finite number > 0"),
        (["--embedded", "--test_fraction", "1"], "--test_fraction 1.0: must be a number in (0, 1)"),
    ],
)
def test_probe_combinations_are_refused_before_loading(argv, message, monkeypatch, capsys):
    def load_encoder(path, device):
        raise Reached

    monkeypatch.setattr(cli, "load_encoder", load_encoder)
    assert outcome(cli.main, ["some/model", *argv], capsys).startswith(f"data2vec-probe: error: {message}")


# ----------------------------------------------------------------------------------------- end to end


def script_argv(tmp_path: Path, *argv: str) -> list[str]:
    """Tiny settings of ``pretrain_text.py``, then ``argv``."""
    return [
        "--output_dir", str(tmp_path / "out"), "--max_train_steps", "2", "--per_device_train_batch_size", "2",
        "--config_overrides", TINY_TEXT, "--max_seq_length", "64", "--bpe_vocab_size", "300",
        "--cache_dir", str(tmp_path / "cache"), *argv,
    ]  # fmt: skip


def pretrain_text_script(tmp_path: Path, *argv: str) -> subprocess.CompletedProcess:
    """``python pretraining/pretrain_text.py`` with tiny settings, as a user runs it."""
    command = [sys.executable, str(ROOT / "pretraining" / "pretrain_text.py"), *script_argv(tmp_path, *argv)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)


def blank_text(tmp_path: Path) -> tuple[list[str], str]:
    path = tmp_path / "blank.txt"
    path.write_text("\n\n   \n\t\n")
    return [
        "--train_file",
        str(path),
    ], f"error: train_file '{path}' holds only blank lines: nothing usable is left"


def csv_without_rows(tmp_path: Path) -> tuple[list[str], str]:
    path = tmp_path / "header_only.csv"
    path.write_text("text\n")
    return ["--train_file", str(path)], f"error: train_file '{path}' holds no rows: nothing usable is left"


def too_few_examples(tmp_path: Path) -> tuple[list[str], str]:
    path = tmp_path / "three_lines.txt"
    path.write_text("one short line\nand another one\nand a third\n")
    return [
        "--train_file",
        str(path),
        "--gradient_accumulation_steps",
        "40",
    ], "cannot fill 1 process(es) x 40 micro-batch(es)"


CASES = {
    "too_few_examples": too_few_examples,
    "max_seq_length": lambda tmp: (
        ["--max_seq_length", "100"],
        "error: --max_seq_length 100 exceeds the model's max_position_embeddings - 2 = 64",
    ),
    "learning_rate_nan": lambda tmp: (
        ["--learning_rate", "nan"],
        "error: --learning_rate nan: must be a finite number > 0",
    ),
    "batch_size_0": lambda tmp: (
        ["--per_device_train_batch_size", "0"],
        "error: --per_device_train_batch_size 0: must be an integer >= 1",
    ),
    "blank_text_file": blank_text,
    "csv_without_rows": csv_without_rows,
}
# as users run it (a subprocess), one case refused by the parser and one found deep in the data
IN_A_SUBPROCESS = ("learning_rate_nan", "too_few_examples")


@pytest.mark.parametrize("name", sorted(CASES))
def test_the_script_exits_2_with_the_message_and_no_traceback(name, tmp_path, capsys):
    argv, message = CASES[name](tmp_path)
    if name in IN_A_SUBPROCESS:
        result = pretrain_text_script(tmp_path, *argv)
        code, stderr = result.returncode, result.stderr
    else:  # the same entry point in this process (no interpreter start-up)
        try:
            code = trainer.run(pretrain_text.SPEC, script_argv(tmp_path, *argv))
        except SystemExit as exit:  # argparse's parser.error
            code = exit.code
        finally:
            reset_accelerate()
        stderr = capsys.readouterr().err
    assert code == 2, stderr[-3000:]
    assert message in stderr and "Traceback" not in stderr, stderr[-3000:]
    assert not (tmp_path / "out" / "config.json").exists()


# ------------------------------------------------------------------------- degenerate sources, in process


def test_audio_whose_clips_are_all_too_short_names_the_folder_and_the_flag(tmp_path):
    folder = tmp_path / "short"
    folder.mkdir()
    for i in range(3):
        sf.write(folder / f"clip{i}.wav", np.zeros(100, dtype=np.float32), 16000)
    raw = load_raw_dataset("audio", train_dir=folder)
    with pytest.raises(DataError) as error:
        prepare_audio_dataset(raw, min_samples=400, cache_dir=tmp_path / "cache")
    assert str(error.value) == (
        f"no usable examples left in '{folder}': audio: kept 0 of 3 examples; skipped too_short=3 "
        "(too_short = clips shorter than --min_length_seconds or the model's receptive field)"
    )


def test_a_folder_of_corrupt_images_names_the_folder(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(2):
        (folder / f"{i}.png").write_bytes(b"\x89PNG not an image")
    raw = load_raw_dataset("vision", train_dir=folder)
    with pytest.raises(
        DataError, match=rf"no usable examples left in '{re.escape(str(folder))}'.*unreadable=2"
    ):
        prepare_image_dataset(raw, build_image_transform(16), cache_dir=tmp_path / "cache")


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("empty.tsv", "", "lists no files"),
        ("root_only.tsv", "/data/clips\n", "lists no files"),
        ("header_only.csv", "file_name,speaker\n", "holds no rows: nothing usable is left to train on"),
        ("empty.jsonl", "", "holds no rows: nothing usable is left to train on"),
        ("object.json", '{"file_name": "a.wav"}', "must hold one object (a row of columns) per example"),
        ("broken.jsonl", '{"file_name": "a.wav"}\n{"file_name": \n', "cannot be read"),
    ],
)
def test_degenerate_audio_manifests_are_clear_errors(name, content, message, tmp_path):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(DataError, match=rf"manifest '{re.escape(str(path))}' .*{re.escape(message)}"):
        load_raw_dataset("audio", train_file=path)


def test_text_of_empty_values_is_a_clear_error_also_when_streamed(tmp_path):
    """A csv whose text column holds only empty values: an error, not a loop that waits for a batch forever."""
    path = tmp_path / "empty_values.csv"
    path.write_text('text\n""\n""\n')
    tokenizer = train_bpe_tokenizer(["some words"] * 10, vocab_size=300)
    with pytest.raises(DataError, match="no text left to train on: column 'text' holds only empty lines"):
        prepare_text_dataset(load_raw_dataset("text", train_file=path, cache_dir=tmp_path), tokenizer)
    stream = load_raw_dataset("text", train_file=path, streaming=True)
    with pytest.raises(DataError, match=r"no text left to train on in column 'text': .*skipped empty=2"):
        prepare_text_dataset(stream, tokenizer)
