"""Streamed data read by several processes and DataLoader workers: one global example index, every
example once, and a resume that goes on exactly where the run stopped — for 0, 1 and 2 workers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from data2vec_hf.pretraining.data.streaming import StreamingBatches, batch_number, in_batch_order
from datasets import Dataset

sys.path.insert(0, str(Path(__file__).parent))
from test_pretraining_scripts import check_ok  # noqa: E402
from test_pretraining_scripts import launch as launch_one  # noqa: E402
from test_scale_out import V1_TEXT, launch, summary, weights, worst_difference  # noqa: E402


def collate(items):
    indices, examples = zip(*items)
    return {"example_index": list(indices), "value": [e["value"] for e in examples]}


def stream(sizes: list[int]):
    """A stream of ``len(sizes)`` shards holding ``sizes[i]`` consecutive values each."""
    values = list(range(sum(sizes)))
    shards, start = [], 0
    for size in sizes:
        shards.append(values[start : start + size])
        start += size

    def generate(shards):
        for shard in shards:
            for value in shard:
                yield {"value": value}

    from datasets import IterableDataset

    return IterableDataset.from_generator(generate, gen_kwargs={"shards": shards})


def process_batches(data, rank: int, world: int, workers: int, skip: int = 0, batch_size: int = 3):
    """The batches of process ``rank`` of ``world`` in epoch 0 (processes one after another here:
    the epoch-end all-reduce is tested through accelerate launch in test_scale_out)."""
    args = SimpleNamespace(per_device_train_batch_size=batch_size, dataloader_num_workers=workers, seed=0)
    accelerator = SimpleNamespace(num_processes=world, process_index=rank, device="cpu")
    batches = StreamingBatches(data, args, collate, accelerator)
    batches.synchronized = lambda iterator: iterator  # one process at a time here
    return [(batch["example_index"], batch["value"]) for batch in batches.epoch(0, skip)]


@pytest.mark.parametrize("workers", [0, 1, 2])
@pytest.mark.parametrize("world", [1, 2])
def test_every_example_once_with_a_unique_index_and_an_exact_resume(world, workers):
    data = stream([5, 5, 5, 5])  # 4 shards: 2 per process with 2 processes, 1 per worker with 2 workers
    seen, indices = [], []
    for rank in range(world):
        full = process_batches(data, rank, world, workers)
        for consumed in range(len(full) + 1):  # killed after any batch, then resumed
            assert process_batches(data, rank, world, workers, skip=consumed) == full[consumed:], consumed
        seen += [v for _, values in full for v in values]
        indices += [i for index, _ in full for i in index]
    assert sorted(seen) == list(range(20))  # every example once, none twice
    assert len(set(indices)) == 20  # so every example has its own random stream (masks, crops)


def test_two_workers_split_the_shards_and_keep_the_batch_order():
    data = stream([6, 6])
    batches = process_batches(data, 0, 1, 2)
    # worker 0 reads shard 0 (values 0-5), worker 1 shard 1 (6-11); batches alternate between them
    assert [values for _, values in batches] == [[0, 1, 2], [6, 7, 8], [3, 4, 5], [9, 10, 11]]


def test_uneven_worker_parts_end_the_epoch_at_the_first_missing_batch():
    """Worker 1's part runs out first: the epoch ends where its next batch is missing, the same way
    in an uninterrupted and in a resumed run."""
    data = stream([9, 3])
    full = process_batches(data, 0, 1, 2)
    assert [values for _, values in full] == [[0, 1, 2], [9, 10, 11], [3, 4, 5]]
    for consumed in range(len(full) + 1):
        assert process_batches(data, 0, 1, 2, skip=consumed) == full[consumed:]


def test_more_workers_than_shards_are_lowered(caplog):
    data = Dataset.from_dict({"value": list(range(12))}).to_iterable_dataset(num_shards=1)
    caplog.set_level("INFO", logger="data2vec_hf.pretraining")
    batches = process_batches(data, 0, 1, 2)
    assert sorted(v for _, values in batches for v in values) == list(range(12))
    assert "--dataloader_num_workers 2 lowered to 1" in caplog.text


def test_batches_are_put_in_order_and_a_worker_that_ran_out_ends_them():
    def number(batch):
        return batch

    assert list(in_batch_order(iter([1, 0, 3, 2, 5, 4]), 0, 2, number)) == [0, 1, 2, 3, 4, 5]
    assert list(in_batch_order(iter([6, 5, 7]), 5, 2, number)) == [5, 6, 7]  # resumed at batch 5
    assert list(in_batch_order(iter([0, 1, 2, 4, 6, 8]), 0, 2, number)) == [0, 1, 2]  # worker 1 ran out
    # the numbering inverts the global example index (count * workers + worker) * replicas + rank
    assert batch_number(((4 * 2 + 1) * 3 + 2), num_replicas=3, workers=2, batch_size=2) == 2 * 2 + 1


# ------------------------------------------------------------------ end to end, two processes, workers


def text_files(folder: Path, lines: list[int]) -> list[Path]:
    """One text file (one stream shard) per entry, with that many lines."""
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for number, count in enumerate(lines):
        path = folder / f"part{number}.txt"
        path.write_text(
            "\n".join(
                f"file {number} says the quick brown fox {i} jumps over the lazy dog {i % 5}"
                for i in range(count)
            )
        )
        files.append(path)
    return files


def stream_args(out: Path, data: Path, steps: int, *extra: str) -> list[str]:
    return [
        "--output_dir", str(out), "--streaming", "--train_dir", str(data), "--config_overrides", V1_TEXT,
        "--max_seq_length", "32", "--bpe_vocab_size", "300", "--max_train_steps", str(steps),
        "--per_device_train_batch_size", "2", "--learning_rate", "1e-3", "--logging_steps", "1",
        "--dataloader_num_workers", "2", "--checkpointing_steps", "4", "--checkpoints_total_limit", "10",
        "--cache_dir", str(out.parent / "cache"), *extra,
    ]  # fmt: skip


def test_two_processes_stream_with_workers_end_epochs_together_and_resume_exactly(tmp_path):
    """Two processes x 2 DataLoader workers, nothing patched: process 1's part of the stream (files 1
    and 3) is much shorter, so every epoch ends when it runs out, for both; a run killed after a
    checkpoint in the middle of an epoch and resumed ends with the weights of the uninterrupted run."""
    data = tmp_path / "data"
    files = text_files(data, [60, 12, 60, 16])
    steps = 20
    full = tmp_path / "full"
    launch("pretrain_text.py", stream_args(full, data, steps), ["--multi_gpu"])
    done = summary(full)
    assert done["num_processes"] == 2 and done["updates"] == steps
    # the epoch length is that of process 1's part alone (its 2 files, 2 workers, one process)
    alone = tmp_path / "alone"
    (tmp_path / "part").mkdir()
    for file in (files[1], files[3]):
        (tmp_path / "part" / file.name).write_text(file.read_text())
    check_ok(
        launch_one(
            "pretrain_text.py",
            stream_args(alone, tmp_path / "part", 12, "--tokenizer_name", str(full / "tokenizer")),
        )
    )
    epoch = summary(alone)["batches_per_epoch"][0]
    assert epoch < 12 and done["completed_epochs"] >= 2, done["batches_per_epoch"]
    assert done["batches_per_epoch"] == [epoch] * done["completed_epochs"]

    killed = tmp_path / "killed"
    process = launch(
        "pretrain_text.py",
        stream_args(killed, data, steps),
        ["--multi_gpu"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 300
    while not (killed / "checkpoints" / "step-4").exists():  # mid-epoch: the epoch is longer than 4
        assert process.poll() is None, "the run ended before its first checkpoint"
        assert time.time() < deadline
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGKILL)
    assert process.wait(timeout=60) != 0
    assert not (killed / "checkpoints" / f"step-{steps}").exists()
    launch(
        "pretrain_text.py",
        stream_args(killed, data, steps, "--resume_from_checkpoint", "latest"),
        ["--multi_gpu"],
    )
    assert summary(killed)["updates"] == steps
    assert summary(killed)["batches_per_epoch"] == done["batches_per_epoch"]
    assert worst_difference(weights(killed), weights(full)) == 0.0


def test_a_streamed_local_folder_is_sharded_so_that_workers_share_it(tmp_path):
    from data2vec_hf.pretraining.data import load_raw_dataset
    from data2vec_hf.pretraining.data.streaming import stream_workers
    from test_pretraining_scripts import audio_folder

    raw = load_raw_dataset("audio", train_dir=audio_folder(tmp_path / "clips", count=8), streaming=True)
    assert raw.num_shards == 8 and stream_workers(raw, 2) == 2  # was a single shard: one worker read all
