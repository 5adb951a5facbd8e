"""Data layer of the pretraining scripts: tiny local data only, no network."""

from __future__ import annotations

import csv
import shutil

import numpy as np
import pytest
import torch
from data2vec_hf.pretraining.data import (
    AudioCollator,
    DataError,
    ImageCollator,
    TextCollator,
    build_image_transform,
    corpora,
    feature_encoder_receptive_field,
    load_or_train_tokenizer,
    load_raw_dataset,
    pad_sequences,
    prepare_audio_dataset,
    prepare_image_dataset,
    prepare_text_dataset,
    random_crop,
    read_audio,
    train_bpe_tokenizer,
    zero_mean_unit_var,
)

sf = pytest.importorskip("soundfile")
HAS_ESPEAK = shutil.which("espeak-ng") is not None


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    """Corpora and preprocessing caches go to the test's own folder, never to ~/.cache."""
    monkeypatch.setenv("DATA2VEC_HF_CACHE", str(tmp_path / "d2v-cache"))


def _tone(seconds: float, rate: int, channels: int = 1) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    wave = (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
    return np.stack([wave] * channels, axis=1) if channels > 1 else wave


@pytest.fixture
def audio_dir(tmp_path):
    """good 16 kHz, stereo 8 kHz, too short, corrupt, empty file; plus a manifest naming a missing file."""
    root = tmp_path / "audio"
    root.mkdir()
    sf.write(root / "good.wav", _tone(1.0, 16000), 16000)
    sf.write(root / "stereo_8k.flac", _tone(0.5, 8000, channels=2), 8000)
    sf.write(root / "short.wav", _tone(0.01, 16000), 16000)  # 160 samples < 400
    (root / "corrupt.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEnot really audio")
    (root / "empty.wav").write_bytes(b"")
    return root


def _prepare_audio(raw, tmp_path, **kwargs):
    return prepare_audio_dataset(
        raw, sampling_rate=16000, min_samples=400, cache_dir=tmp_path / "cache", **kwargs
    )


# ----------------------------------------------------------------------------------------------- audio


def test_audio_folder_skips_and_counts_bad_files(audio_dir, tmp_path):
    raw = load_raw_dataset("audio", train_dir=audio_dir, cache_dir=tmp_path / "cache")
    assert len(raw) == 5
    ds, stats = _prepare_audio(raw, tmp_path)
    assert len(ds) == 2 and stats.kept == 2
    assert stats.skipped == {"unreadable": 2, "too_short": 1}
    assert stats.notes == {"resampled": 1}
    assert "skipped too_short=1, unreadable=2" in stats.summary()
    lengths = sorted(int(ex["length"]) for ex in ds)
    assert lengths == [8000, 16000]  # 0.5 s at 8 kHz resampled to 16 kHz, 1 s unchanged
    for example in ds:
        values = example["input_values"]
        assert values.dtype == np.float32 and len(values) == example["length"]
        assert abs(values.mean()) < 1e-4 and abs(values.std() - 1) < 1e-3  # normalised


def test_audio_manifest_counts_missing_file(audio_dir, tmp_path):
    manifest = audio_dir / "train.csv"
    with open(manifest, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerows([["file_name", "transcription"], ["good.wav", "A"], ["gone.wav", "B"]])
    raw = load_raw_dataset("audio", train_file=manifest)
    ds, stats = _prepare_audio(raw, tmp_path, normalize=False)
    assert stats.kept == 1 and stats.skipped == {"missing": 1}
    np.testing.assert_allclose(ds[0]["input_values"], _tone(1.0, 16000), atol=1e-4)  # not normalised


def test_audio_from_bytes_and_fairseq_manifest(audio_dir, tmp_path):
    (tmp_path / "train.tsv").write_text(f"{audio_dir}\ngood.wav\t16000\nshort.wav\t160\n")
    ds, stats = _prepare_audio(load_raw_dataset("audio", train_file=tmp_path / "train.tsv"), tmp_path)
    assert stats.kept == 1 and stats.skipped == {"too_short": 1}
    audio, rate = read_audio({"bytes": (audio_dir / "stereo_8k.flac").read_bytes(), "path": None})
    assert rate == 8000 and audio.shape == (4000,)


def test_audio_feature_column_with_bytes_is_decoded_with_soundfile(audio_dir, tmp_path):
    from datasets import Audio, Dataset

    values = [
        {"bytes": (audio_dir / name).read_bytes(), "path": name} for name in ("good.wav", "stereo_8k.flac")
    ]
    raw = Dataset.from_dict({"speech": values}).cast_column("speech", Audio(sampling_rate=16000))
    assert raw.features["speech"].decode  # as a Hub dataset: datasets would decode it with torchcodec
    ds, stats = _prepare_audio(raw, tmp_path)  # the Audio-typed column is found; torchcodec is never used
    assert stats.kept == 2 and stats.notes == {"resampled": 1}


def test_audio_streaming_counts_while_iterating(audio_dir, tmp_path):
    raw = load_raw_dataset("audio", train_dir=audio_dir, streaming=True)
    ds, stats = _prepare_audio(raw, tmp_path)
    assert len(list(ds)) == 2
    assert stats.streaming and stats.kept == 2 and sum(stats.skipped.values()) == 3


def test_audio_all_unusable_gives_clear_error(audio_dir, tmp_path):
    raw = load_raw_dataset("audio", train_dir=audio_dir)
    with pytest.raises(DataError, match="no usable examples"):
        prepare_audio_dataset(raw, min_samples=10**7, cache_dir=tmp_path / "cache")


def test_missing_column_names_column_and_alternatives(audio_dir, tmp_path):
    raw = load_raw_dataset("audio", train_dir=audio_dir)
    with pytest.raises(DataError, match=r"column 'speech' does not exist.*available columns: \['audio'\]"):
        _prepare_audio(raw, tmp_path, audio_column="speech")


def test_missing_sources_give_clear_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_raw_dataset("audio", train_dir=tmp_path / "nowhere")
    with pytest.raises(DataError, match="no files with extensions"):
        load_raw_dataset("vision", train_dir=tmp_path)
    with pytest.raises(DataError, match="only one data source"):
        load_raw_dataset("text", train_dir=tmp_path, train_file=tmp_path / "a.txt")


def test_resampling_length():
    from data2vec_hf.pretraining.data.corpora import resample_audio

    assert len(resample_audio(np.zeros(22050, np.float32), 22050, 16000)) == 16000
    assert len(resample_audio(np.zeros(1000, np.float32), 8000, 16000)) == 2000
    assert len(resample_audio(np.zeros(4410, np.float32), 44100, 16000)) == 1600


def test_receptive_field_of_wav2vec2_encoder():
    assert feature_encoder_receptive_field((10, 3, 3, 3, 3, 2, 2), (5, 2, 2, 2, 2, 2, 2)) == 400


def test_random_crop_length_and_content():
    audio = torch.arange(1000, dtype=torch.float32)
    crop = random_crop(audio, 300, torch.Generator().manual_seed(0))
    assert crop.shape == (300,)
    assert torch.equal(crop, torch.arange(int(crop[0]), int(crop[0]) + 300, dtype=torch.float32))
    assert torch.equal(random_crop(audio[:200], 300), audio[:200])  # short clips are kept whole


def test_audio_collator_crops_pads_and_masks():
    examples = [{"input_values": np.ones(n, np.float32)} for n in (5, 3, 12)]
    batch = AudioCollator(max_samples=8, generator=torch.Generator().manual_seed(0))(examples)
    assert batch["input_values"].shape == (3, 8) and batch["input_values"].dtype == torch.float32
    assert batch["attention_mask"].tolist() == [[1] * 5 + [0] * 3, [1] * 3 + [0] * 5, [1] * 8]
    assert torch.equal(batch["input_values"], batch["attention_mask"].float())  # padding is zero
    padded = AudioCollator(pad_to_multiple_of=4)(examples[:2])
    assert padded["input_values"].shape == (2, 8)


def test_zero_mean_unit_var():
    out = zero_mean_unit_var(np.linspace(-3, 7, 1000).astype(np.float32))
    assert out.dtype == np.float32 and abs(out.mean()) < 1e-5 and abs(out.std() - 1) < 1e-4


# ---------------------------------------------------------------------------------------------- vision


@pytest.fixture
def image_dir(tmp_path):
    from PIL import Image

    root = tmp_path / "images"
    for label, color in (("red", (255, 0, 0)), ("blue", (0, 0, 255))):
        (root / label).mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (40 + 10 * i, 30), color).save(root / label / f"{i}.png")
    Image.new("L", (20, 20), 128).save(root / "blue" / "gray.jpg")
    (root / "red" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    png = (root / "red" / "0.png").read_bytes()
    (root / "red" / "truncated.png").write_bytes(png[: len(png) // 2])
    return root


def test_image_folder_skips_corrupt_and_transforms(image_dir, tmp_path):
    raw = load_raw_dataset("vision", train_dir=image_dir)
    assert sorted(raw.column_names) == ["image", "label"] and len(raw) == 7
    transform = build_image_transform(image_size=32)
    ds, stats = prepare_image_dataset(raw, transform, cache_dir=tmp_path / "cache")
    assert len(ds) == 5 and stats.skipped == {"unreadable": 2}
    example = ds[0]
    assert list(example) == ["pixel_values"] and example["pixel_values"].shape == (3, 32, 32)
    batch = ImageCollator()([ds[i] for i in range(len(ds))])
    assert batch["pixel_values"].shape == (5, 3, 32, 32) and batch["pixel_values"].dtype == torch.float32


def test_image_feature_column_with_bytes(image_dir, tmp_path):
    from datasets import Dataset, Image

    values = [{"bytes": p.read_bytes(), "path": p.name} for p in sorted(image_dir.rglob("*.*"))]
    raw = Dataset.from_dict({"img": values}).cast_column("img", Image())
    ds, stats = prepare_image_dataset(raw, build_image_transform(image_size=16), cache_dir=tmp_path / "cache")
    assert stats.kept == 5 and stats.skipped == {"unreadable": 2}
    assert ds[0]["pixel_values"].shape == (3, 16, 16)


def test_image_streaming_skips_corrupt(image_dir, tmp_path):
    raw = load_raw_dataset("vision", train_dir=image_dir, streaming=True)
    ds, stats = prepare_image_dataset(raw, build_image_transform(image_size=16))
    examples = list(ds)
    assert len(examples) == 5 and stats.skipped == {"unreadable": 2}
    assert ImageCollator()(examples)["pixel_values"].shape == (5, 3, 16, 16)


# ------------------------------------------------------------------------------------------------ text


@pytest.fixture
def text_file(tmp_path):
    lines = [
        "The quick brown fox jumps over the lazy dog.",
        "",
        "   ",
        "Pack my box with five dozen liquor jugs.",
    ]
    path = tmp_path / "train.txt"
    path.write_text("\n".join(lines * 20) + "\n")
    return path


def test_bpe_tokenizer_trains_offline_and_round_trips(text_file, tmp_path):
    from transformers import AutoTokenizer

    lines = text_file.read_text().splitlines()
    tokenizer = train_bpe_tokenizer(lines, vocab_size=300, out_dir=tmp_path / "tok")
    assert [tokenizer.convert_ids_to_tokens(i) for i in range(4)] == ["<s>", "<pad>", "</s>", "<unk>"]
    assert tokenizer.mask_token_id == len(tokenizer) - 1
    text = "The lazy fox packs jugs: ünïcode 😀 too."
    ids = tokenizer(text)["input_ids"]
    assert ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(ids, skip_special_tokens=True) == text
    reloaded = AutoTokenizer.from_pretrained(tmp_path / "tok")
    assert reloaded(text)["input_ids"] == ids and reloaded.mask_token_id == tokenizer.mask_token_id


def test_text_drops_empty_lines_and_packs_blocks(text_file, tmp_path):
    raw = load_raw_dataset("text", train_file=text_file, cache_dir=tmp_path / "cache")
    tokenizer = load_or_train_tokenizer(None, raw, tmp_path / "tok", vocab_size=300)
    assert load_or_train_tokenizer(None, raw, tmp_path / "tok").vocab == tokenizer.vocab  # reused
    first_line = tokenizer("The quick brown fox jumps over the lazy dog.", add_special_tokens=False)[
        "input_ids"
    ]
    size = len(first_line) + 6
    ds, stats = prepare_text_dataset(raw, tokenizer, max_seq_length=size, cache_dir=tmp_path / "cache")
    assert stats.kept == 40 and stats.skipped == {"empty": 40}
    blocks = [ex["input_ids"] for ex in ds]
    assert all(3 <= len(b) <= size for b in blocks) and sum(len(b) == size for b in blocks) > 1
    assert all(b[0] == tokenizer.bos_token_id and b[-1] == tokenizer.eos_token_id for b in blocks)
    assert blocks[0][1 : len(first_line) + 2] == [*first_line, tokenizer.eos_token_id]  # lines joined by </s>
    batch = TextCollator(tokenizer.pad_token_id)(list(ds)[-3:])
    lengths = [len(b) for b in blocks[-3:]]
    assert (
        batch["input_ids"].shape == (3, max(lengths)) and batch["attention_mask"].sum(1).tolist() == lengths
    )
    assert (batch["input_ids"][batch["attention_mask"] == 0] == tokenizer.pad_token_id).all()


def test_text_streaming_counts_empty_lines(text_file, tmp_path):
    tokenizer = train_bpe_tokenizer(text_file.read_text().splitlines(), vocab_size=300)
    raw = load_raw_dataset("text", train_file=text_file, streaming=True)
    ds, stats = prepare_text_dataset(raw, tokenizer, max_seq_length=32)
    assert len(list(ds)) > 0 and stats.kept == 40 and stats.skipped == {"empty": 40}


def test_text_missing_column_and_bad_tokenizer(text_file, tmp_path):
    raw = load_raw_dataset("text", train_file=text_file, cache_dir=tmp_path / "cache")
    tokenizer = train_bpe_tokenizer(text_file.read_text().splitlines(), vocab_size=300)
    with pytest.raises(DataError, match=r"column 'content' does not exist.*\['text'\]"):
        prepare_text_dataset(raw, tokenizer, text_column="content")
    tokenizer.mask_token = None
    with pytest.raises(DataError, match="no mask token"):
        prepare_text_dataset(raw, tokenizer)


def test_pad_sequences_multiple():
    batch, mask = pad_sequences(
        [torch.tensor([1, 2, 3]), torch.tensor([4])], pad_value=9, pad_to_multiple_of=4
    )
    assert batch.tolist() == [[1, 2, 3, 9], [4, 9, 9, 9]] and mask.tolist() == [[1, 1, 1, 0], [1, 0, 0, 0]]


# --------------------------------------------------------------------------------------------- corpora


def test_text_corpus_is_real_english(tmp_path):
    path = corpora.build_text_corpus(tmp_path / "text", max_bytes=50_000)
    lines = path.read_text().splitlines()
    assert 50 < len(lines) and 40_000 < path.stat().st_size <= 50_000
    assert all(line.strip() and len(line.split()) >= 6 for line in lines)
    words = " ".join(lines).lower().split()
    assert sum(w in {"the", "a", "of", "is", "to"} for w in words) > 0.05 * len(words)
    mtime = path.stat().st_mtime_ns
    assert (
        corpora.build_text_corpus(tmp_path / "text", max_bytes=50_000).stat().st_mtime_ns == mtime
    )  # reused


def test_default_text_source_is_embedded_corpus(tmp_path):
    raw = load_raw_dataset("text", cache_dir=tmp_path / "cache")
    assert raw.column_names == ["text"] and len(raw) > 100
    assert (tmp_path / "d2v-cache" / "corpora" / "text" / "train.txt").exists()


def test_image_corpus_holds_real_images(tmp_path):
    from PIL import Image

    root = corpora.build_image_corpus(tmp_path / "img", num_digits=20, crops_per_photo=3, crop_size=48)
    files = sorted(root.rglob("*.png"))
    assert len(files) == 26 and {p.parent.name for p in files} >= {"china", "flower", "digit_0", "digit_9"}
    crop = np.asarray(Image.open(root / "china" / "china_0000.png"))
    assert crop.shape == (48, 48, 3) and crop.std() > 10  # a real photograph, not a flat colour
    raw = load_raw_dataset("vision", train_dir=root)
    ds, stats = prepare_image_dataset(raw, build_image_transform(image_size=32), cache_dir=tmp_path / "cache")
    assert stats.kept == 26 and not stats.skipped


def test_builder_refuses_foreign_directory(tmp_path):
    (tmp_path / "mine.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not a corpus"):
        corpora.build_text_corpus(tmp_path, max_bytes=1000)
    assert (tmp_path / "mine.txt").exists()


@pytest.mark.skipif(not HAS_ESPEAK, reason="espeak-ng is not installed (apt-get install espeak-ng)")
def test_speech_corpus_is_spoken_and_transcribed(tmp_path):
    root = corpora.build_speech_corpus(tmp_path / "speech", num_clips=4)
    with open(root / "metadata.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4 and len({r["voice"] for r in rows}) > 1
    for row in rows:
        audio, rate = read_audio(str(root / row["file_name"]))
        assert rate == 16000 and len(audio) == int(row["num_samples"]) > 16000 * 0.8
        assert audio.std() > 0.01  # speech, not silence
        assert (
            row["transcription"] == corpora.normalize_transcript(row["text"])
            and row["transcription"].isupper()
        )
    raw = load_raw_dataset("audio", train_dir=root)
    assert {"audio", "transcription"} <= set(raw.column_names)
    ds, stats = _prepare_audio(raw, tmp_path)
    assert stats.kept == 4 and not stats.skipped


def test_missing_espeak_gives_install_hint(tmp_path, monkeypatch):
    monkeypatch.setattr(corpora.shutil, "which", lambda name: None)
    with pytest.raises(corpora.MissingSystemDependencyError, match="apt-get install espeak-ng"):
        corpora.build_speech_corpus(tmp_path / "speech", num_clips=2)
