"""Bad input and faults: one bad sample never stops a run, a damaged checkpoint never blocks a resume.

Every case asserts its exact outcome: a clear error naming the input (exit code 2 for bad input), or a
counted skip with training going on — and that nothing the user had is lost.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from accelerate.state import AcceleratorState, PartialState
from data2vec_hf.pretraining import pretrain_audio, pretrain_text, pretrain_vision
from data2vec_hf.pretraining.checkpoints import MANIFEST
from data2vec_hf.pretraining.data import (
    DataError,
    load_raw_dataset,
    prepare_audio_dataset,
    prepare_image_dataset,
    prepare_text_dataset,
    read_audio,
    read_image,
    train_bpe_tokenizer,
)
from data2vec_hf.pretraining.trainer import run
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from test_pretraining_scripts import ROOT, TINY_AUDIO, TINY_TEXT, TINY_V2, TINY_VISION, audio_folder  # noqa: E402


def train(spec, output_dir: Path, *argv, steps: int = 2) -> int:
    """A short run of a pretraining script in this process; returns its exit code."""
    args = [
        "--output_dir", str(output_dir), "--max_train_steps", str(steps), "--logging_steps", "1",
        "--per_device_train_batch_size", "4", "--cache_dir", str(output_dir.parent / "cache"), *argv,
    ]  # fmt: skip
    try:
        return run(spec, args)
    finally:
        AcceleratorState._reset_state(True)
        PartialState._reset_state()


def summary(output_dir: Path) -> dict:
    return json.loads((output_dir / "train_summary.json").read_text())


AUDIO = ("--min_length_seconds", "0")


def tone(seconds: float, rate: int = 16000, channels: int = 1) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    clip = np.sin(2 * np.pi * 220 * t) * 0.3
    return np.stack([clip] * channels, axis=1) if channels > 1 else clip


def prepared(folder: Path, tmp_path: Path, **kwargs):
    raw = load_raw_dataset("audio", train_dir=folder)
    return prepare_audio_dataset(raw, min_samples=400, cache_dir=tmp_path / "cache", **kwargs)


# ------------------------------------------------------------------------------------------- audio


@pytest.mark.parametrize("version", [1, 2])
def test_silent_and_constant_clips_train_with_finite_losses(version, tmp_path):
    """A silent clip (all zeros) and a constant one: finite targets (the per-clip and instance
    normalisations are finite for zero variance), no update skipped, in both versions."""
    data = audio_folder(tmp_path / "data", count=6, seconds=(0.5, 0.6))
    sf.write(data / "silent.wav", np.zeros(8000, np.float32), 16000)
    sf.write(data / "constant.wav", np.full(8000, 0.25, np.float32), 16000)
    config = TINY_AUDIO if version == 1 else TINY_V2["audio"]
    out = tmp_path / "out"
    assert train(pretrain_audio.SPEC, out, "--train_dir", str(data), "--config_overrides", config,
                 "--version", str(version), *AUDIO, "--per_device_train_batch_size", "8", steps=3) == 0  # fmt: skip
    result = summary(out)
    assert result["skipped_nonfinite_updates"] == 0 and np.isfinite(result["last"]["loss"])


def test_unusable_audio_files_are_skipped_and_counted(tmp_path):
    data = audio_folder(tmp_path / "data", count=3)
    (data / "corrupt.wav").write_bytes(b"RIFF\x00\x00 definitely not audio")
    (data / "empty.wav").write_bytes(b"")
    sf.write(data / "short.wav", np.zeros(100, np.float32), 16000)
    sf.write(data / "nan.wav", np.full(4000, np.nan, np.float32), 16000, subtype="FLOAT")
    ds, stats = prepared(data, tmp_path)
    assert len(ds) == 3 and stats.skipped == {"unreadable": 3, "too_short": 1}
    assert sorted(Path(s).name for s in ds["source"]) == ["clip0.wav", "clip1.wav", "clip2.wav"]


@pytest.mark.parametrize("rate", [8000, 48000])
def test_other_sampling_rates_are_resampled(rate, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    sf.write(data / "clip.wav", tone(1.0, rate), rate)
    ds, stats = prepared(data, tmp_path)
    assert stats.notes == {"resampled": 1} and ds[0]["length"] == 16000


def test_stereo_44k_is_resampled_and_down_mixed(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    sf.write(data / "stereo.wav", tone(0.5, 44100, channels=2), 44100)
    ds, stats = prepared(data, tmp_path)
    assert stats.notes == {"resampled": 1} and ds[0]["length"] == 8000


@pytest.mark.parametrize(
    "name, kind", [("u8.wav", ("WAV", "PCM_U8")), ("s24.wav", ("WAV", "PCM_24")),
                   ("clip.ogg", ("OGG", "VORBIS")), ("clip.mp3", ("MP3", "MPEG_LAYER_III"))],
)  # fmt: skip
def test_pcm_depths_and_compressed_formats_decode(name, kind, tmp_path):
    path = tmp_path / name
    sf.write(path, tone(0.5), 16000, format=kind[0], subtype=kind[1])
    audio, rate = read_audio(str(path))
    assert rate == 16000 and abs(len(audio) - 8000) < 2000 and np.abs(audio).max() > 0.1


def test_a_two_hour_file_is_read_as_one_window_not_whole(tmp_path):
    """A 2-hour recording keeps one window of 4 x --max_length_seconds (a seeded offset, the same each
    time), and is never decoded whole."""
    path = tmp_path / "long.flac"
    rate, block = 8000, 8000 * 60
    with sf.SoundFile(path, "w", rate, 1, format="FLAC", subtype="PCM_16") as handle:
        for minute in range(120):
            handle.write(np.full(block, (minute % 7) / 10, np.float32))
    tracemalloc.start()
    audio, got_rate = read_audio(str(path), max_seconds=80.0)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert got_rate == rate and len(audio) == 80 * rate
    assert peak < 20e6  # the whole file would be 230 MB of float32
    assert np.array_equal(read_audio(str(path), max_seconds=80.0)[0], audio)


def test_directory_without_audio_is_a_clear_error(tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    (data / "notes.txt").write_text("no audio here")
    assert (
        train(
            pretrain_audio.SPEC, tmp_path / "out", "--train_dir", str(data), "--config_overrides", TINY_AUDIO
        )
        == 2
    )
    assert f"train_dir '{data}' holds no files with extensions" in capsys.readouterr().err


def test_metadata_naming_missing_files_counts_them(tmp_path):
    data = audio_folder(tmp_path / "data", count=2)
    (data / "metadata.csv").write_text("file_name,speaker\nclip0.wav,a\nclip1.wav,b\ngone.wav,c\n")
    ds, stats = prepared(data, tmp_path)
    assert len(ds) == 2 and stats.skipped == {"missing": 1}


def test_a_column_of_the_wrong_type_is_a_clear_error(tmp_path):
    from datasets import Dataset

    raw = Dataset.from_dict({"audio": [str(tmp_path / "a.wav")], "speaker": [3]})
    with pytest.raises(DataError, match=r"column 'speaker' holds int values \('3'\), not audio files"):
        prepare_audio_dataset(raw, audio_column="speaker", cache_dir=tmp_path / "cache")


# ------------------------------------------------------------------------------------------ images


def image_dataset(folder: Path, tmp_path: Path):
    from data2vec_hf.pretraining.data import build_image_transform

    raw = load_raw_dataset("vision", train_dir=folder)
    return prepare_image_dataset(raw, build_image_transform(16), cache_dir=tmp_path / "cache")


def test_exif_orientation_is_applied(tmp_path):
    image = Image.new("RGB", (20, 10), (200, 10, 10))
    exif = image.getexif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    path = tmp_path / "photo.jpg"
    image.save(path, exif=exif)
    assert Image.open(path).size == (20, 10) and read_image(str(path)).size == (10, 20)


def test_a_decompression_bomb_is_skipped_not_decoded(tmp_path):
    """10000 x 10000 = 100 M pixels, over PIL's 89 M limit: skipped and counted as too_large."""
    folder = tmp_path / "images"
    folder.mkdir()
    Image.new("L", (10000, 10000)).save(folder / "huge.png")
    Image.new("RGB", (24, 24), (1, 2, 3)).save(folder / "fine.png")
    ds, stats = image_dataset(folder, tmp_path)
    assert len(ds) == 1 and stats.skipped == {"too_large": 1}


@pytest.mark.parametrize("mode", ["L", "RGBA", "CMYK", "I;16", "P", "1"])
def test_image_modes_load_as_rgb(mode, tmp_path):
    path = tmp_path / f"image.{'tif' if mode in ('CMYK', 'I;16') else 'png'}"
    Image.new(mode, (1, 1) if mode == "1" else (12, 9)).save(path)
    assert read_image(str(path)).mode == "RGB"


def test_an_animated_gif_gives_its_first_frame(tmp_path):
    frames = [Image.new("RGB", (16, 16), color) for color in ((255, 0, 0), (0, 0, 255))]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:], duration=50, loop=0)
    assert read_image(str(tmp_path / "anim.gif")).getpixel((0, 0))[0] > 200


def test_corrupt_and_truncated_images_are_skipped(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    Image.new("RGB", (24, 24), (9, 9, 9)).save(folder / "good.png")
    data = (folder / "good.png").read_bytes()
    (folder / "truncated.png").write_bytes(data[: len(data) // 2])
    (folder / "corrupt.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    ds, stats = image_dataset(folder, tmp_path)
    assert len(ds) == 1 and stats.skipped == {"unreadable": 2}


@pytest.mark.parametrize("version", [1, 2])
def test_blank_images_train_with_finite_losses(version, tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(4):
        Image.new("RGB", (40, 40), (i * 60,) * 3).save(folder / f"blank{i}.png")
    config = TINY_VISION if version == 1 else TINY_V2["vision"]
    out = tmp_path / "out"
    assert train(pretrain_vision.SPEC, out, "--train_dir", str(folder), "--config_overrides", config,
                 "--version", str(version)) == 0  # fmt: skip
    assert summary(out)["skipped_nonfinite_updates"] == 0


# -------------------------------------------------------------------------------------------- text


def test_a_binary_text_file_is_a_clear_error(tmp_path, capsys):
    path = tmp_path / "binary.txt"
    path.write_bytes(b"fine first line\n" + bytes(range(128, 256)) * 4)
    code = train(
        pretrain_text.SPEC, tmp_path / "out", "--train_file", str(path), "--config_overrides", TINY_TEXT,
        "--max_seq_length", "64",
    )  # fmt: skip
    assert code == 2
    error = capsys.readouterr().err
    assert (
        f"text file '{path}' is not valid UTF-8" in error
        and "line 2" in error
        and "weights_only" not in error
    )


def test_mixed_encodings_can_skip_undecodable_lines(tmp_path):
    path = tmp_path / "mixed.txt"
    good = [f"plain english sentence number {i} with words" for i in range(40)]
    path.write_bytes("\n".join(good).encode() + "\ncaf\xe9 in latin-1\n".encode("latin-1"))
    with pytest.raises(DataError, match="is not valid UTF-8"):
        load_raw_dataset("text", train_file=path)
    report: dict = {}
    raw = load_raw_dataset(
        "text", train_file=path, skip_undecodable_lines=True, cache_dir=tmp_path, report=report
    )
    tokenizer = train_bpe_tokenizer(good, vocab_size=300)
    ds, stats = prepare_text_dataset(raw, tokenizer, max_seq_length=32, cache_dir=tmp_path,
                                     undecodable_lines=report["undecodable_lines"])  # fmt: skip
    assert report["undecodable_lines"] == 1 and stats.skipped == {"undecodable": 1} and stats.kept == 40
    assert path.read_bytes().endswith(b"in latin-1\n")  # the user's file is not touched


def test_lines_of_special_tokens_only_are_dropped_and_counted(tmp_path):
    path = tmp_path / "specials.txt"
    path.write_text("<s></s>\n<pad><mask>\nreal words here\n")
    tokenizer = train_bpe_tokenizer(["real words here"] * 20, vocab_size=300)
    ds, stats = prepare_text_dataset(load_raw_dataset("text", train_file=path), tokenizer, cache_dir=tmp_path)
    assert stats.kept == 1 and stats.skipped == {"only_special_tokens": 2} and len(ds) == 1
    only = tmp_path / "only.txt"
    only.write_text("<s></s>\n<mask>\n")
    with pytest.raises(DataError, match="no text left to train on.*only_special_tokens=2"):
        prepare_text_dataset(load_raw_dataset("text", train_file=only), tokenizer, cache_dir=tmp_path)


def test_a_single_10_mb_line_is_packed_into_blocks(tmp_path):
    path = tmp_path / "one_line.txt"
    path.write_text(("lorem ipsum dolor sit amet " * 400_000)[:10_000_000])
    tokenizer = train_bpe_tokenizer(["lorem ipsum dolor sit amet"] * 50, vocab_size=300)
    ds, stats = prepare_text_dataset(load_raw_dataset("text", train_file=path), tokenizer, max_seq_length=512,
                                     cache_dir=tmp_path)  # fmt: skip
    assert stats.kept == 1 and len(ds) > 1000 and all(len(ids) <= 512 for ids in ds[:50]["input_ids"])
    assert ds[0]["input_ids"][0] == tokenizer.bos_token_id


# ----------------------------------------------------------------------------------- configuration


@pytest.mark.parametrize(
    "override, message",
    [
        ("hidden_sise=64", "has no field hidden_sise"),
        ("hidden_size=big", "hidden_size='big' is a str, expected a int"),
        ("hidden_size=30,num_attention_heads=4", "hidden_size=30 is not divisible by num_attention_heads=4"),
    ],
)
@pytest.mark.parametrize("version", [1, 2])
def test_bad_config_overrides_are_clear_errors(override, message, version, tmp_path, capsys):
    data = audio_folder(tmp_path / "data", count=2)
    config = (TINY_AUDIO if version == 1 else TINY_V2["audio"]) + "," + override
    out = tmp_path / "out"
    assert train(pretrain_audio.SPEC, out, "--train_dir", str(data), "--config_overrides", config,
                 "--version", str(version), *AUDIO) == 2  # fmt: skip
    assert message in capsys.readouterr().err
    assert not (out / "config.json").exists()


# ------------------------------------------------------------------------------------- checkpoints


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A finished run with checkpoints step-2 and step-4 (and its data)."""
    root = tmp_path_factory.mktemp("trained")
    data = audio_folder(root / "data", count=4)
    out = root / "out"
    args = ("--train_dir", str(data), "--config_overrides", TINY_AUDIO, *AUDIO, "--checkpointing_steps", "2")
    assert train(pretrain_audio.SPEC, out, *args, steps=4) == 0
    return out, args


def copy_run(trained, tmp_path) -> Path:
    out = tmp_path / "run"
    shutil.copytree(trained[0], out)
    return out


def test_latest_skips_a_damaged_checkpoint_and_names_the_missing_file(trained, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="data2vec_hf.pretraining")
    out = copy_run(trained, tmp_path)
    (out / "checkpoints" / "step-4" / "optimizer.bin").unlink()
    assert train(pretrain_audio.SPEC, out, *trained[1], "--resume_from_checkpoint", "latest", steps=5) == 0
    assert "skipping damaged checkpoint" in caplog.text and "optimizer.bin is missing" in caplog.text
    assert "resumed from" in caplog.text and "step-2 at update 2" in caplog.text
    assert summary(out)["updates"] == 5


def test_latest_skips_a_checkpoint_cut_short(trained, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="data2vec_hf.pretraining")
    out = copy_run(trained, tmp_path)
    weights = out / "checkpoints" / "step-4" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    assert train(pretrain_audio.SPEC, out, *trained[1], "--resume_from_checkpoint", "latest", steps=5) == 0
    assert "model.safetensors has 100 bytes" in caplog.text and "step-2 at update 2" in caplog.text


def test_resuming_from_a_named_damaged_checkpoint_is_a_clear_error(trained, tmp_path, capsys):
    out = copy_run(trained, tmp_path)
    damaged = out / "checkpoints" / "step-4"
    (damaged / "random_states_0.pkl").unlink()
    before = sorted(p.name for p in damaged.iterdir())
    code = train(pretrain_audio.SPEC, out, *trained[1], "--resume_from_checkpoint", str(damaged), steps=5)
    assert code == 2
    assert (
        f"--resume_from_checkpoint {damaged}: the checkpoint is damaged: random_states_0.pkl is missing"
        in (capsys.readouterr().err)
    )
    assert sorted(p.name for p in damaged.iterdir()) == before  # nothing of the user's was touched
    assert (out / "checkpoints" / "step-2" / MANIFEST).exists()


def no_space(*args, **kwargs):
    """What writing a file on a full disk raises."""
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_full_disk_during_a_save_stops_the_run_and_keeps_the_previous_checkpoint(
    tmp_path, capsys, monkeypatch
):
    """The disk fills up during the third checkpoint (ENOSPC injected into the save: no mount rights
    needed, never skipped)."""
    from data2vec_hf.pretraining.parallel import Replicated

    original, saves = Replicated.save, []

    def save(self, folder):
        saves.append(folder)
        if len(saves) == 3:
            original(self, folder)  # some files written, then the disk is full
            no_space()
        return original(self, folder)

    monkeypatch.setattr(Replicated, "save", save)
    data = audio_folder(tmp_path / "data", count=4)
    out = tmp_path / "out"
    code = train(pretrain_audio.SPEC, out, "--train_dir", str(data), "--config_overrides", TINY_AUDIO, *AUDIO,
                 "--checkpointing_steps", "1", "--checkpoints_total_limit", "5", steps=8)  # fmt: skip
    error = capsys.readouterr().err
    assert code == 1, error[-2000:]
    assert f"the disk is full: writing checkpoint {out / 'checkpoints' / 'step-3'} failed" in error
    assert f"the previous checkpoint {out / 'checkpoints' / 'step-2'} is intact" in error
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [
        "step-1",
        "step-2",
    ]  # no half-written one
    assert all((out / "checkpoints" / name / MANIFEST).exists() for name in ("step-1", "step-2"))
    assert not (out / "config.json").exists()
    assert train(pretrain_audio.SPEC, out, "--train_dir", str(data), "--config_overrides", TINY_AUDIO, *AUDIO,
                 "--resume_from_checkpoint", "latest", steps=3) == 0  # fmt: skip


def test_a_full_disk_during_the_export_keeps_the_checkpoints_and_no_half_model(tmp_path, capsys, monkeypatch):
    from data2vec_hf.pretraining import export

    monkeypatch.setattr(export, "write_export", no_space)
    data = audio_folder(tmp_path / "data", count=4)
    out = tmp_path / "out"
    code = train(
        pretrain_audio.SPEC, out, "--train_dir", str(data), "--config_overrides", TINY_AUDIO, *AUDIO, steps=2
    )
    error = capsys.readouterr().err
    assert code == 2 and "exporting the model to" in error and "(the disk is full)" in error, error[-2000:]
    assert "the training checkpoints in" in error and "are intact" in error
    assert (out / "checkpoints" / "step-2" / MANIFEST).exists()
    assert not (out / "config.json").exists() and not (out / ".export-incomplete").exists()


def test_sigterm_finishes_the_update_and_its_checkpoint(tmp_path):
    """SIGTERM (pre-emption) at any moment — also in the middle of a save — stops the run after the
    current update with a complete checkpoint, from which the run then finishes: the resumed run is
    given two updates more than the one it stopped after, so the resume is always checked."""
    data = audio_folder(tmp_path / "data", count=4)
    out = tmp_path / "out"
    argv = [
        sys.executable, str(ROOT / "pretraining" / "pretrain_audio.py"), "--output_dir", str(out),
        "--train_dir", str(data), "--config_overrides", TINY_AUDIO, *AUDIO, "--max_train_steps", "400",
        "--checkpointing_steps", "1", "--checkpoints_total_limit", "3", "--cache_dir", str(tmp_path / "cache"),
    ]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(argv, env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    try:
        while not list((out / "checkpoints").glob("step-*")) if (out / "checkpoints").exists() else True:
            assert process.poll() is None, f"exit code {process.returncode} before the first checkpoint"
            assert time.time() < deadline, "no checkpoint within 120 s"
            time.sleep(0.01)
    except AssertionError as failure:
        process.kill()
        raise AssertionError(f"{failure}\n{process.communicate(timeout=60)[1][-2000:]}") from None
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGTERM, stderr[-2000:]
    assert (
        "stopped by SIGTERM after update" in stderr
        and "continue with --resume_from_checkpoint latest" in stderr
    )
    checkpoints = sorted((out / "checkpoints").glob("step-*"), key=lambda p: int(p.name[5:]))
    assert all((p / MANIFEST).exists() for p in checkpoints)
    stopped_at = int(checkpoints[-1].name[5:])  # the newest checkpoint is the update it stopped after
    assert f"stopped by SIGTERM after update {stopped_at};" in stderr, stderr[-2000:]
    assert 1 <= stopped_at < 400
    # the resumed run goes on for two more updates from wherever the stop came: it always resumes
    steps = argv.index("--max_train_steps") + 1
    resumed_argv = argv[:steps] + [str(stopped_at + 2)] + argv[steps + 1 :]
    resumed_argv += ["--resume_from_checkpoint", "latest"]
    resumed = subprocess.run(resumed_argv, env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"step-{stopped_at} at update {stopped_at}" in resumed.stderr, resumed.stderr[-2000:]
    assert json.loads((out / "train_summary.json").read_text())["updates"] == stopped_at + 2
    assert (out / "checkpoints" / f"step-{stopped_at + 2}" / MANIFEST).exists()


# --------------------------------------------------------------------------------------- converter


def test_converter_refuses_random_bytes_without_unsafe_advice(tmp_path):
    path = tmp_path / "random_bytes.pt"
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    out = tmp_path / "converted"
    result = subprocess.run(
        [sys.executable, "-m", "data2vec_hf.conversion", "--checkpoint", str(path), "--output_dir", str(out)],
        capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )  # fmt: skip
    assert result.returncode == 2
    assert f"cannot read {path}: not a torch checkpoint" in result.stderr
    assert "weights_only" not in result.stderr and "arbitrary code" not in result.stderr
    assert not out.exists()


def test_non_finite_batches_name_their_examples(tmp_path, caplog, capsys):
    """If a loss still is NaN, the update is skipped and the log names the batch's examples and files."""
    import dataclasses

    from data2vec_hf.pretraining.data import AudioCollator

    data = audio_folder(tmp_path / "data", count=4)

    def build_data(args, config, accelerator):
        dataset, _, processor = pretrain_audio.build_data(args, config, accelerator)

        def poison(examples, generators):
            batch = AudioCollator(crop_to_shortest=True)(examples, generators)
            batch["input_values"][0] = float("nan")
            return batch

        return dataset, poison, processor

    spec = dataclasses.replace(pretrain_audio.SPEC, build_data=build_data)
    out = tmp_path / "out"
    code = train(spec, out, "--train_dir", str(data), "--config_overrides", TINY_AUDIO, *AUDIO,
                 "--max_nonfinite_updates", "2", steps=3)  # fmt: skip
    assert code == 1 and "2 updates in a row had a NaN/inf loss" in capsys.readouterr().err
    assert caplog.text.count("NaN/inf loss: update skipped") == 2
    named = caplog.text.split("micro-batches held examples [")[1].split("]")[0]
    assert ".wav)" in named and str(data) in named  # the indices come with their source files


# -------------------------------------------------------------------------------------- fine-tuning


@pytest.fixture(scope="module")
def text_checkpoint(tmp_path_factory):
    """A tiny data2vec 1.0 text encoder with its tokenizer, as a pretraining run exports it."""
    from data2vec_hf import Data2VecTextForPreTraining
    from test_training_fidelity import tiny_text_config

    folder = tmp_path_factory.mktemp("text_encoder")
    tokenizer = train_bpe_tokenizer([f"a sentence about item {i}" for i in range(50)], vocab_size=300)
    config = tiny_text_config(vocab_size=len(tokenizer), mask_token_id=tokenizer.mask_token_id)
    Data2VecTextForPreTraining(config).data2vec_text.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def glue(tmp_path, model, train_rows: str, *extra) -> int:
    from data2vec_hf.finetuning import finetune_glue

    train = tmp_path / "train.csv"
    train.write_text(train_rows)
    return finetune_glue.main([
        "--model_name_or_path", str(model), "--train_file", str(train), "--validation_file", str(train),
        "--do_train", "--max_steps", "1", "--per_device_train_batch_size", "2", "--report_to", "none",
        "--output_dir", str(tmp_path / "out"), *extra,
    ])  # fmt: skip


def test_fine_tuning_data_without_the_label_column_is_a_clear_error(text_checkpoint, tmp_path, capsys):
    code = glue(tmp_path, text_checkpoint, "sentence,score\nfine words,1\nother words,0\n")
    assert code == 2 and "no split has the label column 'label'" in capsys.readouterr().err
    assert not (tmp_path / "out" / "config.json").exists()


def test_fine_tuning_a_path_that_is_not_a_model_is_a_clear_error(tmp_path, capsys):
    empty = tmp_path / "not_a_model"
    empty.mkdir()
    code = glue(tmp_path, empty, "sentence,label\nfine words,1\nother words,0\n")
    assert (
        code == 2
        and f"--model_name_or_path '{empty}': a folder without config.json" in capsys.readouterr().err
    )


def test_fine_tuning_images_skip_corrupt_files(tmp_path, capsys, caplog):
    from data2vec_hf import Data2VecVisionForPreTraining
    from data2vec_hf.finetuning import finetune_image
    from test_training_fidelity import tiny_vision_config

    model = tmp_path / "vision"
    Data2VecVisionForPreTraining(tiny_vision_config()).data2vec_vision.save_pretrained(model)
    images = tmp_path / "images"
    for label in ("a", "b"):
        (images / label).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (40, 40), (i * 80, 10 if label == "a" else 200, 0)).save(
                images / label / f"{i}.png"
            )
    (images / "a" / "broken.png").write_bytes(b"\x89PNG broken")
    caplog.set_level(logging.INFO)
    code = finetune_image.main([
        "--model_name_or_path", str(model), "--train_dir", str(images), "--do_train", "--max_steps", "1",
        "--per_device_train_batch_size", "2", "--report_to", "none", "--output_dir", str(tmp_path / "out"),
    ])  # fmt: skip
    assert code == 0 and "skipped unreadable=1" in caplog.text
