"""The pretraining scripts' and data2vec-probe's flags are typed dataclasses parsed with HfArgumentParser
(issue 22, item 4): every flag users had before keeps its spelling and meaning, ``--help`` still shows the
recipe default of each version, and the probe settings are declared once for data2vec-probe and for
online evaluation (behind ``--eval_``)."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import pytest
from data2vec_hf.evaluation import OnlineEvaluator, add_arguments, cli
from data2vec_hf.evaluation.settings import OnlineEvaluationArguments, ProbeSettings, online_settings
from data2vec_hf.pretraining import pretrain_audio, pretrain_text, pretrain_vision
from data2vec_hf.pretraining.arguments import apply_recipe_defaults, build_parser, parse_run_config
from data2vec_hf.pretraining.run_config import OptimizationArguments, RunConfig
from transformers import HfArgumentParser

SPECS = {"audio": pretrain_audio.SPEC, "vision": pretrain_vision.SPEC, "text": pretrain_text.SPEC}
# every option string of the parsers before they were typed, with the value its destination took
BEFORE = json.loads((Path(__file__).parent / "command_line_flags.json").read_text())
BASES = {"probe": ["some/model"], **{name: ["--output_dir", "out"] for name in SPECS}}


def parser_of(command: str) -> argparse.ArgumentParser:
    return cli.build_parser() if command == "probe" else build_parser(SPECS[command])


@pytest.mark.parametrize("command", list(BASES))
def test_every_flag_of_before_is_accepted_with_the_same_meaning(command):
    parser = parser_of(command)
    assert isinstance(parser, HfArgumentParser)
    assert len(BEFORE[command]) > 20
    wrong = []
    for option, argv, dest, value in BEFORE[command]:
        assert argv[0] == option
        args = parser.parse_args([*BASES[command], *argv])
        if getattr(args, dest, "missing") != value:
            wrong.append(f"{' '.join(argv)}: {dest} = {getattr(args, dest, 'missing')!r}, before {value!r}")
    assert wrong == []
    # and the namespace has every destination it had (the trainer reads args.<name> and vars(args))
    before = {dest for _, _, dest, _ in BEFORE[command]}
    assert before <= set(vars(parser.parse_args(BASES[command])))


@pytest.mark.parametrize(
    "command, name, default",
    [
        ("audio", "group_by_length", True),
        ("audio", "crop_to_shortest", None),  # the recipe's until apply_recipe_defaults
        ("audio", "normalize", True),
        ("text", "keep_host_memory", True),
    ],
)
def test_a_switch_is_negated_in_every_spelling(command, name, default):
    """argparse's ``--no-x_y`` (the spelling before), transformers' ``--no_x_y`` and ``--no-x-y``."""
    parser, base = parser_of(command), BASES[command]
    assert getattr(parser.parse_args(base), name) is default
    hyphens = name.replace("_", "-")
    for negation in {f"--no-{name}", f"--no_{name}", f"--no-{hyphens}"}:
        assert getattr(parser.parse_args([*base, negation]), name) is False, negation
    for option in {f"--{name}", f"--{hyphens}"}:
        assert getattr(parser.parse_args([*base, f"--no_{name}", option]), name) is True, option


def test_a_switch_takes_no_value_so_a_positional_after_it_stays_positional():
    args = cli.build_parser().parse_args(["--embedded", "some/model"])
    assert args.embedded is True and args.model == "some/model"
    assert not hasattr(cli.build_parser().parse_args(["m"]), "no_embedded")  # default-off: no negation
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["m", "--no_embedded"])


@pytest.mark.parametrize("modality", SPECS)
def test_help_shows_the_recipe_default_of_each_version(modality, capsys):
    spec = SPECS[modality]
    with pytest.raises(SystemExit) as exit:
        build_parser(spec).parse_args(["--help"])
    assert exit.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    names = {name for values in spec.defaults.values() for name in values} - {"warmup_fraction"}
    assert {"learning_rate", "lr_scheduler_type"} <= names
    for name in names:
        shown = ", ".join(f"v{v}: {values[name]}" for v, values in sorted(spec.defaults.items()))
        assert f"(default: {shown})" in text, name
    assert "(default: None)" not in text.split("--learning_rate LEARNING_RATE")[1].split("--adam_beta1")[0]


def test_the_recipe_fills_what_was_not_given_and_an_explicit_flag_wins():
    spec = pretrain_audio.SPEC
    parser = build_parser(spec)
    args = parser.parse_args(
        ["--output_dir", "o", "--version", "2", "--max_tokens", "0", "--no-crop_to_shortest"]
    )
    assert args.learning_rate is None
    apply_recipe_defaults(spec, args)
    assert args.learning_rate == spec.defaults[2]["learning_rate"] and args.lr_scheduler_type == "cosine"
    assert args.max_tokens == 0 and args.crop_to_shortest is False
    assert args.warmup_fraction == spec.defaults[2]["warmup_fraction"]


def test_parse_run_config_gives_the_typed_groups(tmp_path):
    args, config = parse_run_config(
        pretrain_vision.SPEC, ["--output_dir", str(tmp_path), "--learning_rate", "1e-4", "--eval_embedded"]
    )
    assert isinstance(config, RunConfig) and isinstance(config.optimization, OptimizationArguments)
    assert config.optimization.learning_rate == 1e-4 == args.learning_rate
    assert config.optimization.adam_beta2 == pretrain_vision.SPEC.defaults[1]["adam_beta2"]
    assert isinstance(config.modality, pretrain_vision.VisionArguments)
    assert config.modality.crop_min_scale == 0.08 and config.modality.hflip == 0.5
    assert config.training.output_dir == str(tmp_path) and config.evaluation.eval_embedded is True
    # every flag belongs to exactly one group
    names = [
        f.name
        for part in (getattr(config, f.name) for f in dataclasses.fields(config))
        for f in dataclasses.fields(part)
    ]
    assert len(names) == len(set(names))
    assert set(names) == set(vars(build_parser(pretrain_vision.SPEC).parse_args(["--output_dir", "o"])))


def test_parse_run_config_refuses_a_bad_value_naming_the_flag(capsys):
    with pytest.raises(SystemExit) as exit:
        parse_run_config(pretrain_text.SPEC, ["--output_dir", "o", "--learning_rate", "nan"])
    assert exit.value.code == 2
    assert "--learning_rate nan: must be a finite number > 0" in capsys.readouterr().err


def test_the_probe_settings_are_declared_once():
    """data2vec-probe's flags and the --eval_ flags have the same defaults: both come from ProbeSettings."""
    probe = cli.build_parser().parse_args(["m"])
    online = build_parser(pretrain_text.SPEC).parse_args(["--output_dir", "o"])
    renames = {"data_dir": "eval_dir", "data_file": "eval_file"}
    for field in dataclasses.fields(ProbeSettings):
        online_name = renames.get(field.name, f"eval_{field.name}")
        assert getattr(probe, field.name) == field.default == getattr(online, online_name), field.name
    assert {f.name for f in dataclasses.fields(OnlineEvaluationArguments)} == {
        renames.get(f.name, f"eval_{f.name}") for f in dataclasses.fields(ProbeSettings)
    } | {"eval_steps", "eval_at_start"}
    settings, schedule = online_settings(build_parser(pretrain_text.SPEC).parse_args(
        ["--output_dir", "o", "--eval_dir", "d", "--eval_knn_k", "7", "--eval_steps", "3"]
    ))  # fmt: skip
    assert (settings.data_dir, settings.knn_k, settings.embedded, schedule.steps) == ("d", 7, False, 3)


def test_add_arguments_still_adds_the_online_flags_to_a_plain_argparse_group():
    parser = argparse.ArgumentParser()
    add_arguments(parser.add_argument_group("evaluation"))
    args = parser.parse_args([])
    assert args.eval_knn_k == 20 and args.eval_steps == 500 and args.eval_embedded is False
    assert OnlineEvaluator.from_args(args, "text", None) is None  # no source: no evaluator
    assert parser.parse_args(["--eval_at_start"]).eval_at_start is True


def test_the_parsers_fill_their_dataclasses_too():
    settings, command, extra = cli.build_parser().parse_args_into_dataclasses(
        ["m", "--embedded", "--knn_k", "5"], look_for_args_file=False
    )
    assert isinstance(settings, ProbeSettings) and (settings.embedded, settings.knn_k) == (True, 5)
    assert isinstance(command, cli.ProbeCommand) and extra.model == "m"
    parts = build_parser(pretrain_audio.SPEC).parse_args_into_dataclasses(
        ["--output_dir", "o", "--no-group_by_length"], look_for_args_file=False
    )
    audio = next(p for p in parts if isinstance(p, pretrain_audio.AudioArguments))
    assert audio.group_by_length is False and audio.max_tokens is None  # (the recipe fills it later)


def test_a_script_may_still_add_its_flags_to_an_argparse_group():
    def add_arguments(group):
        group.add_argument("--frames", type=int, default=3, help="frames per clip")

    spec = dataclasses.replace(pretrain_text.SPEC, add_arguments=add_arguments)
    parser = build_parser(spec)
    args = parser.parse_args(["--output_dir", "o", "--frames", "4"])
    assert args.frames == 4 and not hasattr(args, "bpe_vocab_size")
    assert RunConfig.from_namespace(spec, args).modality is None
