"""End-to-end tests of the pretraining scripts, driven through `accelerate launch` as users run them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image
from safetensors.torch import load_file
from transformers import AutoModel

ROOT = Path(__file__).resolve().parents[1]
TINY_AUDIO = (
    "hidden_size=32,num_hidden_layers=2,num_attention_heads=2,intermediate_size=64,conv_dim=(32,32,32),"
    "conv_kernel=(10,3,3),conv_stride=(5,2,2),num_conv_pos_embedding_groups=4,conv_pos_kernel_size=7,"
    "num_conv_pos_embeddings=2,average_top_k_layers=2,mask_length=4"
)
NO_DROPOUT = (
    ",hidden_dropout=0.0,attention_dropout=0.0,activation_dropout=0.0,feat_proj_dropout=0.0,layerdrop=0.0"
)
TINY_VISION = (
    "hidden_size=32,num_hidden_layers=2,num_attention_heads=2,intermediate_size=64,image_size=32,patch_size=8,"
    "average_top_k_layers=2,min_mask_patches_per_block=2"
)
TINY_TEXT = (
    "hidden_size=32,num_hidden_layers=2,num_attention_heads=2,intermediate_size=64,average_top_k_layers=2,"
    "max_position_embeddings=66,mlm_probability=0.3,mask_span_length=1"
)


V2 = ",decoder_dim=16,decoder_groups=4,decoder_layers=2,clone_batch=2"
TINY_V2 = {
    "audio": TINY_AUDIO.replace(",mask_length=4", "") + V2,
    "vision": TINY_VISION.replace(",min_mask_patches_per_block=2", "") + V2 + ",prenet_depth=1",
    "text": TINY_TEXT.replace(",mlm_probability=0.3,mask_span_length=1", "")
    + V2.replace("decoder_groups=4", "decoder_groups=1"),
}


def launch(
    script: str, args: list[str], num_processes: int = 1, **popen
) -> subprocess.CompletedProcess | subprocess.Popen:
    """`accelerate launch` the script; with two processes on a CPU machine this means DDP over gloo."""
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
    ]
    if num_processes > 1:
        command += [
            "--multi_gpu",
            "--num_processes",
            str(num_processes),
            "--main_process_port",
            str(29500 + os.getpid() % 1000),
        ]
    else:
        command += ["--num_processes", "1", "--cpu"]
    command += [str(ROOT / "pretraining" / script), *args]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    if popen:
        # own process group, so a SIGKILL reaches the launcher and the training process it started
        return subprocess.Popen(
            command,
            env=env,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
    return subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)


def check_ok(result):
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]


def summary(output_dir: Path) -> dict:
    return json.loads((output_dir / "train_summary.json").read_text())


def audio_folder(root: Path, count: int = 8, seconds=(0.3, 0.6), seed: int = 0, rate: int = 16000) -> Path:
    """Tiny speech-like clips (modulated tones + noise) as wav files."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        length = int(rate * (seconds[0] if seconds[0] == seconds[1] else rng.uniform(*seconds)))
        t = np.arange(length) / rate
        clip = np.sin(2 * np.pi * rng.uniform(100, 400) * t) * (
            1 + np.sin(2 * np.pi * 3 * t)
        ) + 0.1 * rng.standard_normal(length)
        sf.write(root / f"clip{i}.wav", clip.astype(np.float32), rate, subtype="FLOAT")
    return root


def common(output_dir: Path, steps: int, batch: int = 4, **extra) -> list[str]:
    """Flags of a short run; audio clips of the tests are shorter than the recipes' 2 s minimum, so
    audio runs pass ``min_length_seconds=0``."""
    args = [
        "--output_dir",
        str(output_dir),
        "--max_train_steps",
        str(steps),
        "--per_device_train_batch_size",
        str(batch),
        "--logging_steps",
        "1",
        "--cache_dir",
        str(output_dir.parent / "cache"),
    ]
    for key, value in extra.items():
        args += [f"--{key}", str(value)]
    return args


def test_help_documents_every_flag_with_default():
    result = subprocess.run(
        [sys.executable, str(ROOT / "pretraining" / "pretrain_audio.py"), "--help"],
        capture_output=True,
        text=True,
    )
    check_ok(result)
    for flag in (
        "--resume_from_checkpoint",
        "--config_overrides",
        "--streaming",
        "--push_to_hub",
        "--max_length_seconds",
        "--version",
    ):
        assert flag in result.stdout
    assert "resampled" in result.stdout and "(default: v1: 0.0005, v2: 0.00075)" in result.stdout
    assert "(default: None)" not in result.stdout.split("--learning_rate")[1].split("--weight_decay")[0]


@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize("modality", ["audio", "vision", "text"])
def test_script_end_to_end(modality, version, tmp_path):
    data = tmp_path / "data"
    out = tmp_path / "out"
    if modality == "audio":
        audio_folder(data)
        (data / "corrupt.wav").write_bytes(b"RIFF not really a wav file")  # skipped and counted
        sf.write(
            data / "short.wav", np.zeros(200, dtype=np.float32), 16000
        )  # shorter than the receptive field
        sf.write(
            data / "other_rate.wav", np.random.default_rng(1).standard_normal(4000).astype(np.float32), 8000
        )  # resampled
        args = common(out, 3, train_dir=data, config_overrides=TINY_AUDIO, min_length_seconds=0)
    elif modality == "vision":
        rng = np.random.default_rng(0)
        for i in range(6):
            (data / f"class{i % 2}").mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(
                data / f"class{i % 2}" / f"{i}.png"
            )
        args = common(out, 3, train_dir=data, config_overrides=TINY_VISION)
    else:
        data.mkdir()
        lines = [f"the quick brown fox number {i} jumps over the lazy dog {i % 7} times" for i in range(60)]
        (data / "train.txt").write_text("\n".join(lines + ["", "   "]))
        args = common(
            out,
            3,
            train_file=data / "train.txt",
            config_overrides=TINY_TEXT,
            max_seq_length=64,
            bpe_vocab_size=300,
        )
    if version == 2:
        args[args.index("--config_overrides") + 1] = TINY_V2[modality]
        args += ["--version", "2"]
    check_ok(launch(f"pretrain_{modality}.py", args))
    result = summary(out)
    assert result["updates"] == 3 and np.isfinite(result["last"]["loss"])
    encoder = AutoModel.from_pretrained(out)
    if version == 1:
        assert type(encoder).__module__.startswith("transformers.models.data2vec")
    else:
        assert type(encoder).__name__.startswith("Data2Vec2")
    assert (out / "pretraining_model" / "config.json").exists() and (out / "README.md").exists()
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step-3"]


def final_weights(output_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(output_dir / "pretraining_model" / "model.safetensors")


def assert_same_weights(a: dict, b: dict, atol: float):
    assert a.keys() == b.keys()
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst <= atol, worst
    # and the runs really trained: the teacher moved away from its initial copy of the student
    return worst


def test_two_processes_match_one(tmp_path):
    data = audio_folder(tmp_path / "data", count=8, seconds=(0.5, 0.5))  # equal lengths: no crop
    # require_same_masks trims masks to the fewest in a *per-process* batch (as in fairseq), which
    # depends on the split; without it every example's mask is its own
    overrides = TINY_AUDIO + NO_DROPOUT + ",require_same_masks=false"
    one = tmp_path / "one"
    two = tmp_path / "two"
    check_ok(
        launch(
            "pretrain_audio.py",
            common(
                one,
                4,
                batch=4,
                train_dir=data,
                config_overrides=overrides,
                min_length_seconds=0,
                learning_rate=1e-3,
            ),
        )
    )
    check_ok(
        launch(
            "pretrain_audio.py",
            common(
                two,
                4,
                batch=2,
                train_dir=data,
                config_overrides=overrides,
                min_length_seconds=0,
                learning_rate=1e-3,
            ),
            num_processes=2,
        )
    )
    assert summary(one)["num_processes"] == 1
    assert summary(two)["num_processes"] == 2  # two gloo processes really ran
    assert summary(one)["updates"] == summary(two)["updates"] == 4
    assert summary(one)["last"]["loss"] == pytest.approx(summary(two)["last"]["loss"], rel=1e-4)
    # the collapse statistics are those of the whole update, reduced over both processes
    for key in ("target_var", "pred_var", "masked_fraction"):
        assert summary(one)["last"][key] == pytest.approx(summary(two)["last"][key], rel=1e-4), key
    assert_same_weights(final_weights(one), final_weights(two), atol=2e-5)


def test_resume_after_sigkill_with_workers_matches_uninterrupted_run(tmp_path):
    data = audio_folder(tmp_path / "data", count=12)
    args = dict(
        train_dir=data,
        config_overrides=TINY_AUDIO,
        min_length_seconds=0,
        checkpointing_steps=3,
        checkpoints_total_limit=5,
        learning_rate=1e-3,
    )
    steps, batch = 12, 3
    full = tmp_path / "full"
    check_ok(launch("pretrain_audio.py", common(full, steps, batch=batch, **args)))

    # the killed and resumed run collates in 2 DataLoader workers: workers change nothing, not even a bit
    killed = tmp_path / "killed"
    args["dataloader_num_workers"] = 2
    process = launch("pretrain_audio.py", common(killed, steps, batch=batch, **args), popen=True)
    deadline = time.time() + 300
    while not (killed / "checkpoints" / "step-3").exists():
        assert process.poll() is None, "the run ended before writing its first checkpoint"
        assert time.time() < deadline
        time.sleep(0.02)
    assert process.poll() is None, "the run finished before it could be killed"
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    time.sleep(0.5)
    done = [p.name for p in (killed / "checkpoints").iterdir() if p.name.startswith("step-")]
    assert done and f"step-{steps}" not in done

    check_ok(
        launch(
            "pretrain_audio.py", common(killed, steps, batch=batch, resume_from_checkpoint="latest", **args)
        )
    )
    assert summary(killed)["updates"] == steps
    assert_same_weights(final_weights(full), final_weights(killed), atol=0.0)


def test_collapse_guard_stops_and_keeps_last_good_checkpoint(tmp_path):
    data = audio_folder(tmp_path / "data")
    out = tmp_path / "out"
    overrides = TINY_AUDIO + ",collapse_guard_after=2,min_target_var=1000.0"
    result = launch(
        "pretrain_audio.py",
        common(
            out, 10, train_dir=data, config_overrides=overrides, min_length_seconds=0, checkpointing_steps=2
        ),
    )
    assert result.returncode == 1
    assert "target_var" in result.stderr and "collapsing" in result.stderr and "update 3" in result.stderr
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step-2"]
    assert not (out / "config.json").exists()  # nothing from the collapsed run was exported


def test_nonfinite_updates_are_skipped_and_counted(tmp_path):
    """The file pipeline drops non-finite audio, so feed one NaN clip through the ModalitySpec API:
    the updates that see it are skipped and counted, and training carries on."""
    import dataclasses

    from accelerate.state import AcceleratorState, PartialState
    from data2vec_hf.pretraining import pretrain_audio
    from data2vec_hf.pretraining.data import AudioCollator
    from data2vec_hf.pretraining.trainer import run

    rng = np.random.default_rng(0)
    clips = [{"input_values": rng.standard_normal(6000).astype(np.float32)} for _ in range(5)]
    clips.append({"input_values": np.full(6000, np.nan, dtype=np.float32)})
    spec = dataclasses.replace(
        pretrain_audio.SPEC, build_data=lambda args, config, accelerator: (clips, AudioCollator(), None)
    )
    out = tmp_path / "out"
    try:
        code = run(
            spec,
            common(
                out, 8, batch=1, config_overrides=TINY_AUDIO, min_length_seconds=0, max_nonfinite_updates=3
            ),
        )
    finally:
        AcceleratorState._reset_state(True)
        PartialState._reset_state()
    assert code == 0
    result = summary(out)
    assert result["updates"] == 8 and result["skipped_nonfinite_updates"] >= 1
    assert all(torch.isfinite(t).all() for t in final_weights(out).values())


def test_repeated_nonfinite_losses_stop_training(tmp_path):
    """An absurd learning rate breaks the weights: every following loss is NaN, training stops."""
    data = audio_folder(tmp_path / "data", count=5)
    out = tmp_path / "stop"
    result = launch(
        "pretrain_audio.py",
        common(
            out,
            20,
            train_dir=data,
            config_overrides=TINY_AUDIO,
            min_length_seconds=0,
            learning_rate=1e30,
            max_nonfinite_updates=2,
        ),
    )
    assert result.returncode == 1
    assert "2 updates in a row had a NaN/inf loss" in result.stderr
    assert not (out / "config.json").exists()


def test_missing_column_is_a_clear_error(tmp_path):
    data = audio_folder(tmp_path / "data", count=2)
    result = launch(
        "pretrain_audio.py",
        common(
            tmp_path / "out",
            2,
            train_dir=data,
            config_overrides=TINY_AUDIO,
            min_length_seconds=0,
            audio_column="speech",
        ),
    )
    assert result.returncode != 0
    assert "speech" in result.stderr and "available" in result.stderr.lower()


def test_bad_output_dir_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "pretraining" / "pretrain_audio.py"),
            "--output_dir",
            str(blocker / "sub"),
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2 and "--output_dir" in result.stderr and "not writable" in result.stderr
    assert "Traceback" not in result.stderr


def test_streaming_local_data_with_tensorboard_tracking(tmp_path):
    data = audio_folder(tmp_path / "data", count=6)
    out = tmp_path / "out"
    args = common(out, 4, batch=2, train_dir=data, config_overrides=TINY_AUDIO, min_length_seconds=0) + [
        "--streaming",
        "--with_tracking",
    ]
    check_ok(launch("pretrain_audio.py", args))
    assert summary(out)["updates"] == 4  # the 3-batch stream was iterated over more than one epoch
    events = list((out / "runs").rglob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0


def test_pretraining_export_with_remote_code(tmp_path):
    """--remote_code: the exported 2.0 encoder carries its modelling code and auto_map (the loading in an
    environment without data2vec-hf is tested in test_remote_code.py)."""
    from accelerate.state import AcceleratorState, PartialState
    from data2vec_hf.pretraining import pretrain_text
    from data2vec_hf.pretraining.trainer import run

    data = tmp_path / "train.txt"
    data.write_text("\n".join(f"the quick brown fox number {i} jumps over the lazy dog" for i in range(40)))
    out = tmp_path / "out"
    argv = common(
        out, 1, train_file=data, config_overrides=TINY_V2["text"], max_seq_length=64, bpe_vocab_size=300
    )
    try:
        assert run(pretrain_text.SPEC, argv + ["--version", "2", "--remote_code"]) == 0
    finally:
        AcceleratorState._reset_state(True)
        PartialState._reset_state()
    config = json.loads((out / "config.json").read_text())
    assert config["auto_map"]["AutoModel"] == "modeling_data2vec2_text.Data2Vec2TextModel"
    assert (out / "modeling_data2vec2_text.py").exists() and (
        out / "pretraining_model" / "modeling_data2vec2_text.py"
    ).exists()
    assert "trust_remote_code=True" in (out / "README.md").read_text()
    # (here data2vec_hf is imported, so the Auto classes give its own class; same weights either way)
    assert type(AutoModel.from_pretrained(out, trust_remote_code=True)).__name__ == "Data2Vec2TextModel"
