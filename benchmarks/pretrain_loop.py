#!/usr/bin/env python
"""The whole pretraining loop at speed, against the pure training step, for the same model and batches.

For every config (``audio-v2,vision-v2,text-v2`` by default) this

1. writes a folder of real-format files: 44.1 kHz mono FLAC clips of 4-12 s (``--audio_seconds``; the
   pipeline resamples them to 16 kHz), JPEGs of 300-500 px a side, or ``.txt`` files of English prose
   (Python's documentation); enough of them that one epoch holds every update of the run;
2. runs the real pretraining script on that folder (``pretraining/pretrain_<modality>.py``, in its own
   process, as a user runs it) with ``--dataloader_num_workers N`` for ``--warmup`` + ``--updates``
   updates, logging and checkpointing at the script's default intervals (``--logging_steps``,
   ``--checkpointing_steps``). The process is this file started as ``pretrain_loop.py instrumented-run``:
   it wraps methods of ``PretrainingLoop`` and ``Reporter.log`` with timers (``pretraining/`` itself is unchanged);
3. times, in this process after the run has exited, the pure training step of
   ``pretrain_throughput.py`` (forward, backward, fused AdamW, EMA; no data, no statistics, no logging)
   on a model of the run's exact config and on the very batches of the timed updates (masks included).

What is timed: the loop's window runs from the end of warm-up update ``--warmup`` to the end of update
``--warmup + --updates``: exactly ``--updates`` iterations of the loop, each with the wait for the next
batch (``next()`` on ``epoch_batches``: DataLoader workers decoding, augmenting, collating and sampling
masks, then the move to the device), ``micro_batch`` (forward, statistics, backward), ``update``
(all-reduce, clipping, AdamW, schedule, EMA, metrics), ``log`` and ``checkpoint``. Start-up, data
preparation (the cached decode/resample of audio, the image check, tokenizer training and tokenization),
the warm-up updates and the final checkpoint and export are outside it. ``checkpoint.seconds`` is the
final save, measured; ``overhead_ratio_with_checkpoints`` adds it once per ``--checkpointing_steps``.

Prints one JSON object (progress goes to stderr). ``--size tiny`` (default; ``base`` takes 6-20 s a step
on 2 CPU cores) or ``base``. On a shared CPU machine use ``--threads 1``: with a thread per core, one
descheduled thread stalls every parallel op of the others, and the same step then varies 10-fold.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from data2vec_hf.pretraining.host_memory import keep_freed_host_memory
from pretrain_throughput import TINY, TINY_EXTRA, time_steps, training_step

AUDIO_RATE = 44_100  # the files' rate; the pipeline resamples to 16 kHz
IMAGE_SIDES = (300, 500)  # JPEG width and height, uniform
PREPARE = {
    "audio": "prepare_audio_dataset",
    "vision": "prepare_image_dataset",
    "text": "prepare_text_dataset",
}
WINDOW = ("data_wait", "micro_batch", "update", "log", "checkpoint")


def log(message: str) -> None:
    print(f"[pretrain_loop] {message}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------- data


def write_audio(folder: Path, count: int, seconds: list[float], rng: np.random.Generator) -> float:
    """``count`` speech-like FLAC clips (voiced harmonics, syllable envelope, noise) at 44.1 kHz, of
    ``seconds`` (min, max) each; returns their total duration in seconds."""
    import soundfile

    total = 0
    for i in range(count):
        n = int(rng.uniform(*seconds) * AUDIO_RATE)
        t = np.arange(n) / AUDIO_RATE
        f0 = rng.uniform(90, 240) * (1 + 0.1 * np.sin(2 * np.pi * rng.uniform(0.2, 1) * t))
        phase = 2 * np.pi * np.cumsum(f0) / AUDIO_RATE
        voiced = sum(np.sin(k * phase) / k for k in range(1, 7))
        envelope = np.sin(2 * np.pi * rng.uniform(3, 5) * t + rng.uniform(0, 6)) ** 2
        audio = 0.2 * envelope * voiced + 0.01 * rng.standard_normal(n)
        soundfile.write(folder / f"clip_{i:05d}.flac", audio.astype(np.float32), AUDIO_RATE, subtype="PCM_16")
        total += n
    return total / AUDIO_RATE


def write_images(folder: Path, count: int, rng: np.random.Generator) -> int:
    """``count`` photo-like JPEGs (smooth colour fields with fine texture), quality 90."""
    from PIL import Image

    for i in range(count):
        width, height = (int(rng.integers(IMAGE_SIDES[0], IMAGE_SIDES[1] + 1)) for _ in range(2))
        coarse = Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)).resize(
            (width, height), Image.BICUBIC
        )
        pixels = np.asarray(coarse, dtype=np.int16) + rng.integers(-20, 21, (height, width, 3))
        image = Image.fromarray(pixels.clip(0, 255).astype(np.uint8))
        image.save(folder / f"image_{i:05d}.jpg", quality=90)
    return count


def write_text(folder: Path, num_bytes: int) -> int:
    """``.txt`` files of 20 paragraphs each (one per line) of English prose, ``num_bytes`` in all."""
    from data2vec_hf.pretraining.data.corpora import english_paragraphs

    paragraphs, written, files = english_paragraphs(), 0, 0
    while written < num_bytes:
        lines = [next(paragraphs) for _ in range(20)]
        text = "\n".join(lines) + "\n"
        (folder / f"doc_{files:05d}.txt").write_text(text, encoding="utf-8")
        written, files = written + len(text.encode()), files + 1
    return files


def write_data(modality: str, folder: Path, args) -> dict:
    """Enough files for one epoch of ``--warmup + --updates + 2`` updates (a margin of 30 %)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    batches = args.warmup + args.updates + 2
    started = time.perf_counter()
    if modality == "audio":
        mean_samples = sum(args.audio_seconds) / 2 * 16_000
        per_batch = args.batch_size if args.streaming else max(args.max_tokens / mean_samples, 1)
        count = math.ceil(1.3 * batches * per_batch)
        what = {"format": "FLAC, mono, 16 bit", "sampling_rate": AUDIO_RATE, "seconds": args.audio_seconds}
        what["total_seconds"] = round(write_audio(folder, count, args.audio_seconds, rng), 4)
        files = count
    elif modality == "vision":
        what = {"format": "JPEG, quality 90", "sides_px": list(IMAGE_SIDES)}
        files = write_images(folder, math.ceil(1.3 * batches * args.batch_size), rng)
    else:
        what = {"format": "UTF-8 .txt, one paragraph a line"}
        # about 4 bytes of English per BPE token
        files = write_text(folder, int(1.3 * batches * args.batch_size * args.max_seq_length * 4))
    size = sum(f.stat().st_size for f in folder.iterdir())
    seconds = time.perf_counter() - started
    return what | {"files": files, "megabytes": round(size / 2**20, 2), "write_seconds": round(seconds, 2)}


# --------------------------------------------------------------------------------- the timed run


def script_arguments(modality: str, args, data_dir: Path, run_dir: Path, cache_dir: Path) -> list[str]:
    argv = [
        "--output_dir", str(run_dir), "--train_dir", str(data_dir), "--cache_dir", str(cache_dir),
        "--version", "2", "--seed", "0", "--max_train_steps", str(args.warmup + args.updates),
        "--dataloader_num_workers", str(args.num_workers), "--logging_steps", str(args.logging_steps),
        "--checkpointing_steps", str(args.checkpointing_steps), "--mixed_precision", args.mixed_precision,
    ]  # fmt: skip
    if modality == "audio" and not args.streaming:
        argv += ["--max_tokens", str(args.max_tokens)]
    else:  # (a stream is batched by examples, also audio)
        argv += ["--per_device_train_batch_size", str(args.batch_size)]
    if modality == "text":
        argv += ["--max_seq_length", str(args.max_seq_length)]
    if args.size == "tiny":
        dims = dict(TINY, **TINY_EXTRA[modality])
        dims.pop("vocab_size", None)  # the text script sizes the vocabulary to its tokenizer
        argv += ["--config_overrides", ",".join(f"{k}={v}".replace(" ", "") for k, v in dims.items())]
    argv += [] if args.keep_host_memory else ["--no-keep_host_memory"]
    argv += ["--torch_compile"] * args.compile + ["--gradient_checkpointing"] * args.gradient_checkpointing
    return argv + ["--streaming"] * args.streaming


def worker_cpu_seconds() -> float:
    """CPU seconds (user + system) of this process's live child processes: its DataLoader workers
    (Linux ``/proc``; 0 elsewhere)."""
    total, tick, me = 0.0, os.sysconf("SC_CLK_TCK"), str(os.getpid())
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # it just exited
            continue
        if fields[1] == me:  # its parent
            total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
    return total


def instrumented_run(modality: str, record_path: str, argv: list[str]) -> int:
    """The pretraining script's ``main(argv)``, with timers around ``PretrainingLoop``'s steps and its
    data preparation; writes what they saw to ``record_path`` (JSON) and the timed window's batches and
    the model config next to it."""
    born = time.perf_counter()
    from data2vec_hf.pretraining.reporting import Reporter
    from data2vec_hf.pretraining.trainer import PretrainingLoop

    record = json.loads(Path(record_path).read_text())
    first, last = record["warmup"], record["warmup"] + record["updates"]
    events, ends, saves, batches, state = [], {}, [], [], {}
    module = importlib.import_module(f"data2vec_hf.pretraining.pretrain_{modality}")

    def timed(name, method):
        @functools.wraps(method)
        def wrapper(self, *args, **kwargs):
            started = time.perf_counter()
            try:
                return method(self, *args, **kwargs)
            finally:
                events.append((name, started, time.perf_counter()))

        return wrapper

    def epoch_batches(self):
        state["loop"] = self
        batches_of_epoch = original_batches(self)
        while True:
            started = time.perf_counter()
            batch = next(batches_of_epoch, None)
            events.append(("data_wait", started, time.perf_counter()))
            if batch is None:
                return
            if first <= self.progress.num_updates < last:
                batches.append(dict(batch))  # references only: micro_batch pops keys off the dict
            yield batch

    def update(self):
        started = time.perf_counter()
        metrics = original_update(self)
        end = time.perf_counter()
        events.append(("update", started, end))
        if metrics is not None:  # the update counted: the end of loop iteration num_updates
            cpu = (time.process_time(), worker_cpu_seconds())  # this process, its workers
            ends[self.progress.num_updates] = (end, self.progress.epoch, *cpu)
            events.append(("measuring", end, time.perf_counter()))  # not the loop's time: left out
        return metrics

    def checkpoint(self, force=False):
        before, started = self.saved_at, time.perf_counter()
        original_checkpoint(self, force)
        if self.saved_at != before:
            saves.append((self.saved_at, time.perf_counter() - started))

    def prepare(*args, **kwargs):
        started = time.perf_counter()
        dataset, stats = original_prepare(*args, **kwargs)
        state["data"] = {
            "preparation_seconds": time.perf_counter() - started,
            "kept": stats.kept,
            "skipped": dict(stats.skipped),
            "notes": dict(stats.notes),  # "resampled": clips whose rate was not 16 kHz
            "streaming": stats.streaming,
        }
        if modality == "audio" and not stats.streaming:
            state["data"]["decoded_samples_16k"] = int(np.sum(dataset["length"]))
        return dataset, stats

    original_batches, original_update = PretrainingLoop.epoch_batches, PretrainingLoop.update
    original_checkpoint, original_prepare = PretrainingLoop.checkpoint, getattr(module, PREPARE[modality])
    PretrainingLoop.epoch_batches = epoch_batches
    PretrainingLoop.micro_batch = timed("micro_batch", PretrainingLoop.micro_batch)
    PretrainingLoop.update = update
    Reporter.log = timed("log", Reporter.log)  # the loop's progress bar, log line and trackers
    PretrainingLoop.checkpoint = timed("checkpoint", checkpoint)
    setattr(module, PREPARE[modality], prepare)  # build_data looks the name up in the script module

    code = module.main(argv)
    loop = state["loop"]
    folder = Path(record_path).parent
    torch.save([{k: v.cpu() for k, v in b.items()} for b in batches], folder / "window_batches.pt")
    (folder / "model_config.json").write_text(loop.unwrapped.config.to_json_string())
    record.update(
        exit_code=code,
        born=born,
        events=events,
        update_ends={str(k): v for k, v in ends.items()},
        saves=saves,
        data=state.get("data"),
        samples_seen=loop.progress.samples_seen,
        workers=loop.stream.workers if loop.streaming else loop.dataloader.num_workers,
        threads=torch.get_num_threads(),
    )
    Path(record_path).write_text(json.dumps(record))
    return code


def window_breakdown(record: dict) -> dict:
    """Seconds of the timed window and of each timed step in it (events clipped to the window)."""
    ends = {int(k): v for k, v in record["update_ends"].items()}
    first, last = record["warmup"], record["warmup"] + record["updates"]
    start, end = ends[first][0], ends[last][0]
    spent = dict.fromkeys(WINDOW + ("measuring",), 0.0)
    for name, began, finished in record["events"]:
        spent[name] += max(0.0, min(finished, end) - max(began, start))
    measuring = spent.pop("measuring")  # this benchmark's own CPU readings (in this process)
    seconds = end - start - measuring
    spent["other"] = seconds - sum(spent.values())  # stop checks, progress bar, loop bookkeeping
    times = [ends[n][0] for n in range(first, last + 1)]
    readings = {began: finished - began for name, began, finished in record["events"] if name == "measuring"}
    return {
        "seconds": seconds,
        # robust to a few updates stalled by other work on a shared machine
        "median_seconds": statistics.median(b - a - readings.get(a, 0.0) for a, b in zip(times, times[1:])),
        "spent": spent,
        "main_cpu_seconds": ends[last][2] - ends[first][2] - measuring,
        "worker_cpu_seconds": ends[last][3] - ends[first][3],
        "epochs_crossed": ends[last][1] - ends[first][1],
        "first_update_after_start_seconds": ends[1][0] - record["born"],
    }


def pure_step(modality: str, folder: Path, args, device) -> dict:
    """The pure step of ``pretrain_throughput.py`` on the run's model config and timed batches."""
    module = importlib.import_module(f"data2vec_hf.pretraining.pretrain_{modality}")
    model_class = module.SPEC.model_classes[2]
    config = model_class.config_class.from_json_file(folder / "model_config.json")
    torch.manual_seed(0)
    model = model_class(config).to(device).train()
    if args.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if args.compile:
        from data2vec_hf.pretraining.building import compile_blocks

        compile_blocks(model)
    # the batch entries that describe the batch (the loop pops them), not model inputs
    accounting = module.SPEC.accounting
    info_keys = {"example_index"} | ({accounting.info_key} if accounting is not None else set())
    batches = [
        {k: v.to(device) for k, v in batch.items() if k not in info_keys}
        for batch in torch.load(folder / "window_batches.pt")
    ]
    step = training_step(model, args, device)
    # per-step times only on CPU: on a GPU they need a synchronisation after every step, which would
    # hide what the loop's own per-batch synchronisations cost
    timed = time_steps(step, batches, args.warmup, len(batches), device, each=device.type == "cpu")
    main_input = [next(iter(b.values())) for b in batches]
    return {
        "seconds_per_update": timed["seconds"] / len(batches),
        "median_seconds": statistics.median(timed["step_seconds"]) if timed["step_seconds"] else None,
        "cpu_seconds_per_update": timed["cpu_seconds"] / len(batches),
        "masked_per_update": timed["masked"] / len(batches),
        "examples_per_update": sum(len(x) for x in main_input) / len(batches),
        "input_shapes": sorted({"x".join(map(str, x.shape)) for x in main_input}),
        "parameters_m": round(sum(p.numel() for p in model.parameters() if p.requires_grad) / 1e6, 2),
    }


def run_config(name: str, args, work: Path, device) -> dict:
    """Write the data, run the instrumented pretraining script, time the pure step; one JSON entry."""
    modality = name.split("-")[0]
    folder = work / name
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    log(f"{name}: writing {modality} files")
    files = write_data(modality, folder / "data", args)
    log(f"{name}: {files['files']} files, {files['megabytes']} MB in {files['write_seconds']} s")
    record_path = folder / "record.json"
    record_path.write_text(json.dumps({"warmup": args.warmup, "updates": args.updates}))
    argv = script_arguments(modality, args, folder / "data", folder / "run", work / "cache")
    command = [sys.executable, str(Path(__file__).resolve()), "instrumented-run", modality, str(record_path)]
    log(f"{name}: pretraining run, {args.warmup} + {args.updates} updates (log: {folder / 'run.log'})")
    with open(folder / "run.log", "w") as out:
        env = dict(os.environ, HF_HUB_OFFLINE="1")
        if args.threads:
            env["OMP_NUM_THREADS"] = str(args.threads)  # torch's intra-op threads in the run
        done = subprocess.run(command + argv, stdout=out, stderr=subprocess.STDOUT, env=env)
    record = json.loads(record_path.read_text())
    if done.returncode != 0 or record.get("exit_code") != 0:
        tail = (folder / "run.log").read_text()[-3000:]
        raise SystemExit(f"error: the {name} pretraining run failed (exit {done.returncode}):\n{tail}")
    window = window_breakdown(record)
    log(f"{name}: pure step on the same {args.updates} batches")
    step = pure_step(modality, folder, args, device)
    updates = args.updates
    loop = window["seconds"] / updates
    per_update = {k: round(v / updates, 5) for k, v in window["spent"].items()}
    saved = record["saves"][-1][1] if record["saves"] else None
    amortised = saved / args.checkpointing_steps if saved is not None else 0.0
    median_step = step["median_seconds"]
    result = {
        "loop_seconds_per_update": round(loop, 5),
        "step_seconds_per_update": round(step["seconds_per_update"], 5),
        "overhead_ratio": round(loop / step["seconds_per_update"] - 1, 4),
        "overhead_ratio_with_checkpoints": round((loop + amortised) / step["seconds_per_update"] - 1, 4),
        # the same from the median update and the median step (CPU only), robust to a few stalls
        "median_loop_seconds_per_update": round(window["median_seconds"], 5),
        "median_step_seconds_per_update": round(median_step, 5) if median_step else None,
        "median_overhead_ratio": round(window["median_seconds"] / median_step - 1, 4)
        if median_step
        else None,
        "dataloader_num_workers": record["workers"],
        "torch_threads": record["threads"],
        "loop_seconds_per_update_by_part": per_update,
        "data_wait_fraction": round(window["spent"]["data_wait"] / window["seconds"], 4),
        # CPU seconds per update of the training process (all its threads) and of its DataLoader
        # workers: on a machine with spare cores the workers keep up while workers_cpu / workers < step
        "main_cpu_seconds_per_update": round(window["main_cpu_seconds"] / updates, 5),
        "step_cpu_seconds_per_update": round(step["cpu_seconds_per_update"], 5),
        "worker_cpu_seconds_per_update": round(window["worker_cpu_seconds"] / updates, 5),
        # the loop's own compute (statistics, clipping, schedule, metrics) over the pure step's
        "loop_compute_over_step": round(
            (per_update["micro_batch"] + per_update["update"]) / step["seconds_per_update"] - 1, 4
        ),
        "checkpoint": {
            "every_updates": args.checkpointing_steps,
            "seconds": round(saved, 3) if saved is not None else None,
            "seconds_per_update_amortised": round(amortised, 6),
        },
        "logging_every_updates": args.logging_steps,
        "examples_seen": record["samples_seen"],
        "epochs_crossed_in_window": window["epochs_crossed"],
        "first_update_after_start_seconds": round(window["first_update_after_start_seconds"], 2),
        "batch": {k: step[k] for k in ("examples_per_update", "masked_per_update", "input_shapes")},
        "parameters_m": step["parameters_m"],
        "files": files,
        "pipeline": record["data"],
    }
    if window["epochs_crossed"]:
        log(f"warning: {name}: the timed window crossed an epoch boundary (DataLoader workers restarted)")
    log(f"{name}: loop {loop:.4f} s/update, step {step['seconds_per_update']:.4f} s/update")
    return result


def main() -> None:
    if sys.argv[1:2] == ["instrumented-run"]:  # the pretraining run's own process (see the docstring)
        sys.exit(instrumented_run(sys.argv[2], sys.argv[3], sys.argv[4:]))
    from data2vec_hf.pretraining.arguments import build_parser
    from data2vec_hf.pretraining.pretrain_text import SPEC

    script = build_parser(SPEC)  # for the scripts' own logging and checkpointing intervals
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--configs", default="audio-v2,vision-v2,text-v2", help="comma-separated configs")
    parser.add_argument("--size", choices=["base", "tiny"], default="tiny", help="encoder size")
    parser.add_argument("--num_workers", type=int, default=2, help="--dataloader_num_workers of the runs")
    parser.add_argument("--updates", type=int, default=10, help="timed updates (and timed pure steps)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed updates (and pure steps) first")
    parser.add_argument(
        "--audio_seconds", type=float, nargs=2, default=[4.0, 12.0], metavar=("MIN", "MAX"),
        help="durations of the FLAC clips, uniform",
    )  # fmt: skip
    parser.add_argument(
        "--batch_size",
        type=int,
        default=8,
        help="vision/text examples per update (audio too with --streaming)",
    )
    parser.add_argument(
        "--max_tokens", type=int, default=320_000,
        help="audio samples (16 kHz) per update, longest clip x clips (the 2.0 recipe has 1000000; "
        "20 s keeps a 2-core run short)",
    )  # fmt: skip
    parser.add_argument("--max_seq_length", type=int, default=512, help="text tokens per example")
    parser.add_argument(
        "--logging_steps", type=int, default=script.get_default("logging_steps"), help="(the scripts')"
    )
    parser.add_argument(
        "--checkpointing_steps",
        type=int,
        default=script.get_default("checkpointing_steps"),
        help="(the scripts')",
    )
    parser.add_argument(
        "--streaming", action="store_true",
        help="--streaming runs: files are decoded (audio resampled) in the DataLoader workers, not prepared "
        "once; a folder is one shard, so the scripts lower the workers to 1",
    )  # fmt: skip
    parser.add_argument(
        "--keep_host_memory", action=argparse.BooleanOptionalAction, default=True,
        help="CPU: glibc malloc keeps freed memory, in the runs (their default) and the pure step alike",
    )  # fmt: skip
    parser.add_argument(
        "--threads", type=int, default=None,
        help="torch threads of the runs and the pure step (default: torch's, one per core); 1 is steadier "
        "on a shared machine, where a descheduled thread stalls every parallel op of the others",
    )  # fmt: skip
    parser.add_argument("--mixed_precision", choices=["no", "bf16", "fp16"], default="no")
    parser.add_argument("--compile", action="store_true", help="torch.compile the transformer blocks")
    parser.add_argument("--gradient_checkpointing", action="store_true")
    parser.add_argument(
        "--work_dir", default=None, help="keep files, runs and logs here (default: a temp dir)"
    )
    args = parser.parse_args()
    if args.warmup < 1 or args.updates < 1:
        parser.error(
            "--warmup and --updates must be at least 1 (the window starts at a warm-up update's end)"
        )
    for name in args.configs.split(","):
        if not name.endswith("-v2") or name.split("-")[0] not in PREPARE:
            parser.error(f"unknown config {name!r}: the loop mode runs audio-v2, vision-v2 and text-v2")

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if args.threads:
        torch.set_num_threads(args.threads)
    # as in the runs (pretraining/host_memory.py): without it, CPU steps pay page faults for every step
    kept = device.type == "cpu" and args.keep_host_memory and keep_freed_host_memory()
    temporary = None if args.work_dir else tempfile.TemporaryDirectory(prefix="pretrain_loop_")
    work = Path(args.work_dir or temporary.name)
    report = {
        "mode": "loop",
        "arguments": sys.argv[1:],
        "device": str(device),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "size": args.size,
        "version": 2,
        "precision": {"no": "fp32"}.get(args.mixed_precision, args.mixed_precision),
        "compile": args.compile,
        "host_memory_kept": kept,
        "streaming": args.streaming,
        "warmup_updates": args.warmup,
        "timed_updates": args.updates,
    }
    load = os.getloadavg()  # other work on the machine shows here (1-minute average vs cpu_count)
    report["configs"] = {name: run_config(name, args, work, device) for name in args.configs.split(",")}
    report["load_average_1min"] = {"start": round(load[0], 2), "end": round(os.getloadavg()[0], 2)}
    if temporary is not None:
        temporary.cleanup()
    print(json.dumps(report))


if __name__ == "__main__":
    main()
