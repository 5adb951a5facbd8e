#!/usr/bin/env python
"""Pretraining throughput and model FLOP utilisation (MFU) of data2vec 1.0 and 2.0, in one process.

Every configuration (modality x version x size) runs full training steps — forward, backward, AdamW
step and EMA update — on the same random inputs and masks, and reports:

- ``samples_per_s`` (each original sample counted once, whatever the clone count M) and
  ``masked_targets_per_s`` (every clone counted: the learning signal per second);
- ``page_faults_per_step`` and ``system_seconds_per_step`` (host memory churn of the timed steps);
- ``seconds_per_step`` and ``peak_mem_mb`` (peak GPU memory, or on CPU the peak growth of the RSS,
  from before the model is built to the last step: model, optimizer state and activations);
- ``flops_per_step``: model FLOPs of forward + backward, counted by ``torch.utils.flop_counter`` with
  grouped convolutions' weight gradients counted analytically (torch's formula counts them ``groups``
  times too high), and ``achieved_tflops``;
- ``mfu``: achieved FLOP/s over the device's peak. On CPU the peak is *measured in the same run*: the
  fp32 throughput of a 4096 x 4096 matmul on this machine, measured before every config and at the
  end, the highest of these (``peak.measured_tflops``). On a GPU it is the documented dense peak of
  the device for the run's precision (``peak.documented_tflops``).

Prints one JSON object. ``--configs audio-v1,audio-v2,vision-v2,text-v2`` (default) picks what runs;
``--size base`` (default) or ``tiny``.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import os
import resource
import threading
import time

import data2vec_hf
import torch
from data2vec_hf.data2vec2_text import Data2Vec2TextConfig, Data2Vec2TextForPreTraining
from data2vec_hf.data2vec2_vision import Data2Vec2VisionConfig, Data2Vec2VisionForPreTraining
from data2vec_hf.pretraining.host_memory import keep_freed_host_memory, release_free_host_memory
from torch.utils.flop_counter import FlopCounterMode

BASE = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072)
TINY = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128)
TINY_EXTRA = {
    "audio": dict(conv_dim=(64,) * 7, num_conv_pos_embedding_groups=4, average_top_k_layers=2),
    "vision": dict(average_top_k_layers=2, image_size=64, patch_size=16, decoder_dim=64, decoder_groups=4),
    "text": dict(average_top_k_layers=2, decoder_dim=64, vocab_size=1000),
}
# dense peak TFLOP/s by precision (vendor data sheets; SXM boards)
GPU_PEAKS = {
    "H200": {"bf16": 989.0, "fp16": 989.0, "fp32": 67.0},
    "H100": {"bf16": 989.0, "fp16": 989.0, "fp32": 67.0},
    "A100": {"bf16": 312.0, "fp16": 312.0, "fp32": 19.5},
    "L4": {"bf16": 121.0, "fp16": 121.0, "fp32": 30.3},
    "A10": {"bf16": 125.0, "fp16": 125.0, "fp32": 31.2},
}


class PeakMemory:
    """Peak CUDA memory, or on CPU the peak growth of the RSS (sampled every 5 ms) over the RSS at the
    start, after the heap's free memory was given back (kept freed memory would hide the growth)."""

    def __init__(self, device):
        self.device, self.peak, self._stop = device, 0, threading.Event()

    @staticmethod
    def _rss() -> int:
        with open(f"/proc/{os.getpid()}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
            return self
        gc.collect()
        release_free_host_memory()
        self.start = self._rss()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, self._rss() - self.start)

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            self.peak = torch.cuda.max_memory_allocated()
        else:
            self._stop.set()
            self._thread.join()
        return False


# ------------------------------------------------------------------------------------------- models


def build(name: str, size: str, clone_batch: int | None):
    """``(model, batch)`` for ``audio-v1``, ``audio-v2``, ``vision-v1``, ``vision-v2``, ``text-v1``, ``text-v2``."""
    modality, version = name.split("-")
    dims = dict(BASE if size == "base" else TINY)
    if size == "tiny":
        dims.update(TINY_EXTRA[modality])
    generator = torch.Generator().manual_seed(0)
    if version == "v2" and clone_batch:
        dims["clone_batch"] = clone_batch
    if modality == "audio":
        batch = {"input_values": torch.randn(2, 64000, generator=generator)}  # 2 x 4 s
        if version == "v1":
            dims.pop("decoder_dim", None)
            model = data2vec_hf.Data2VecAudioForPreTraining(
                data2vec_hf.Data2VecAudioPreTrainingConfig(**dims)
            )
        else:
            model = data2vec_hf.Data2Vec2AudioForPreTraining(data2vec_hf.Data2Vec2AudioConfig(**dims))
        return model, batch
    if modality == "vision":
        side = dims.get("image_size", 224)
        batch = {"pixel_values": torch.randn(2, 3, side, side, generator=generator)}
        if version == "v1":
            for key in ("decoder_dim", "decoder_groups", "clone_batch"):
                dims.pop(key, None)
            model = data2vec_hf.Data2VecVisionForPreTraining(
                data2vec_hf.Data2VecVisionPreTrainingConfig(**dims, ema_anneal_end_step=1000)
            )
        else:
            model = Data2Vec2VisionForPreTraining(Data2Vec2VisionConfig(**dims))
        return model, batch
    vocab = dims.get("vocab_size", 50265)
    ids = torch.randint(4, vocab - 1, (2, 512), generator=generator)
    ids[:, 0], ids[:, -1] = 0, 2
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    if version == "v1":
        for key in ("decoder_dim", "clone_batch"):
            dims.pop(key, None)
        model = data2vec_hf.Data2VecTextForPreTraining(
            data2vec_hf.Data2VecTextPreTrainingConfig(**dims, mask_token_id=vocab - 1)
        )
    else:
        model = Data2Vec2TextForPreTraining(Data2Vec2TextConfig(**dims))
    return model, batch


def fixed_masks(model, batch) -> dict:
    """Sample the masks once, so every step (and the FLOP count) sees the same ones."""
    with torch.no_grad():
        out = model(**batch)
    name = {
        "input_values": "mask_time_indices",
        "pixel_values": "bool_masked_pos",
        "input_ids": "masked_positions",
    }[next(iter(batch))]
    return {name: out.mask}


# -------------------------------------------------------------------------------------------- FLOPs


def _conv_flops(x_shape, w_shape, out_shape) -> int:
    """2 x batch x out spatial x (weight elements): the FLOPs of one (grouped) convolution."""
    return 2 * x_shape[0] * math.prod(out_shape[2:]) * math.prod(w_shape)


def conv_backward_flops(grad_out_shape, x_shape, w_shape, _bias, _stride, _padding, _dilation, transposed,
                        _output_padding, _groups, output_mask, out_shape=None, **kwargs) -> int:  # fmt: skip
    """Input and weight gradients of a convolution each cost one forward convolution — also for grouped
    convolutions, whose weight gradient torch's own formula counts ``groups`` times."""
    forward = _conv_flops(x_shape, w_shape, grad_out_shape if not transposed else x_shape)
    return forward * (int(output_mask[0]) + int(output_mask[1]))


def count_flops(model, batch) -> int:
    """Model FLOPs of one forward + backward (teacher forward included)."""
    mapping = {torch.ops.aten.convolution_backward: conv_backward_flops}
    with FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        out = model(**batch)
        out.loss.backward()
    model.zero_grad(set_to_none=True)
    return int(counter.get_total_flops())


def measured_cpu_peak(size: int = 4096, repeats: int = 5) -> float:
    """fp32 FLOP/s of a size x size matmul on this machine (best of ``repeats``)."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.mm(a, b)
    best = math.inf
    for _ in range(repeats):
        started = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - started)
    return 2 * size**3 / best


def documented_gpu_peak(device, precision: str) -> tuple[str, float | None]:
    name = torch.cuda.get_device_name(device)
    for key, peaks in GPU_PEAKS.items():
        if key in name:
            return name, peaks[precision] * 1e12
    return name, None


# ---------------------------------------------------------------------------------------------- run


def training_step(model, args, device):
    """``step(batch, i)``: one full training step of ``model`` on ``batch`` — forward, backward, fused
    AdamW step and EMA update ``i + 1`` — returning the masked-target count. Shared with
    ``pretrain_loop.py``, which times it on the batches of a real pretraining run."""
    # fused, as the pretraining loop's (pretraining/optim.py)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, fused=True)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.mixed_precision)
    autocast = torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext()

    def step(batch, i) -> int:
        with autocast:
            out = model(**batch)
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        model.ema_step(i + 1)
        return int(out.num_masked)

    return step


def time_steps(step, batches: list[dict], warmup: int, steps: int, device, each: bool = False) -> dict:
    """``warmup`` untimed steps, then ``steps`` timed ones, cycling through ``batches``. Returns the
    timed ``seconds``, the ``masked`` targets, the process's ``cpu_seconds`` and its host memory churn
    (``page_faults``, ``system_seconds``) over the timed steps; with ``each``, also ``step_seconds``,
    the time of every step (on a GPU each step then ends with a synchronisation)."""
    for i in range(warmup):
        step(batches[i % len(batches)], i)
    masked, step_seconds = 0, []
    sync = torch.cuda.synchronize if device.type == "cuda" else lambda: None
    sync()
    usage, started = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    last = started
    for i in range(steps):
        masked += step(batches[(warmup + i) % len(batches)], warmup + i)
        if each:
            sync()
            now = time.perf_counter()
            step_seconds.append(now - last)
            last = now
    sync()
    elapsed = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "seconds": elapsed,
        "masked": masked,
        "page_faults": after.ru_minflt - usage.ru_minflt,
        "system_seconds": after.ru_stime - usage.ru_stime,
        "cpu_seconds": after.ru_utime + after.ru_stime - usage.ru_utime - usage.ru_stime,
        "step_seconds": step_seconds,
    }


def prepare(name: str, args, device):
    """``(model, batch, flops, step)``: the config's model and fixed batch, its FLOPs per step and
    :func:`training_step` of the model."""
    torch.manual_seed(0)
    model, batch = build(name, args.size, args.clone_batch)
    model.to(device).train()
    if args.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    batch = {k: v.to(device) for k, v in batch.items()}
    batch.update(fixed_masks(model, batch))
    flops = count_flops(model, batch)
    if args.compile:
        from data2vec_hf.pretraining.building import compile_blocks

        compile_blocks(model)
    return model, batch, flops, training_step(model, args, device)


def run(name: str, args, device, peak: float | None) -> dict:
    """One config's timed steps; on CPU (``peak`` None) the matmul peak is measured right before. The
    peak memory covers model, optimizer state and every step."""
    peak_before = measured_cpu_peak(args.peak_matmul_size) if device.type == "cpu" else None
    with PeakMemory(device) as memory:
        model, batch, flops, step = prepare(name, args, device)
        timed = time_steps(step, [batch], args.warmup, args.steps, device)
    elapsed, masked = timed["seconds"], timed["masked"]
    samples = args.steps * next(iter(batch.values())).shape[0]
    achieved = flops * args.steps / elapsed
    result = {
        "samples_per_s": round(samples / elapsed, 4),
        "masked_targets_per_s": round(masked / elapsed, 2),
        "masked_per_step": masked // args.steps,
        "seconds_per_step": round(elapsed / args.steps, 3),
        "peak_mem_mb": round(memory.peak / 2**20, 1),
        # host memory churn: the page faults and kernel time of the timed steps (see --keep_host_memory)
        "page_faults_per_step": timed["page_faults"] // args.steps,
        "system_seconds_per_step": round(timed["system_seconds"] / args.steps, 3),
        "parameters_m": round(sum(p.numel() for p in model.parameters() if p.requires_grad) / 1e6, 2),
        "flops_per_step": flops,
        "achieved_tflops": round(achieved / 1e12, 4),
        "achieved_flops_per_s": achieved,
        "mfu": round(achieved / peak, 4) if peak else None,
    }
    if name.endswith("v2"):
        result["clone_batch"] = model.config.clone_batch
    if peak_before is not None:
        result["peak_before"] = peak_before
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--configs", default="audio-v1,audio-v2,vision-v2,text-v2", help="comma-separated configs"
    )
    parser.add_argument("--size", choices=["base", "tiny"], default="base", help="encoder size")
    parser.add_argument("--clone_batch", type=int, default=None, help="2.0 clones M (default: the recipe's)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per config")
    parser.add_argument(
        "--warmup", type=int, default=2,
        help="untimed steps first (2: the host heap reaches its high-water mark, see --keep_host_memory)",
    )  # fmt: skip
    parser.add_argument(
        "--keep_host_memory", action=argparse.BooleanOptionalAction, default=True,
        help="CPU: glibc malloc keeps freed memory, as the pretraining loop does (pretraining/host_memory.py)",
    )  # fmt: skip
    parser.add_argument("--mixed_precision", choices=["no", "bf16", "fp16"], default="no")
    parser.add_argument("--compile", action="store_true", help="torch.compile the transformer blocks")
    parser.add_argument("--gradient_checkpointing", action="store_true")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--peak_matmul_size", type=int, default=4096, help="CPU: matmul size of the peak")
    args = parser.parse_args()

    device = torch.device(args.device)
    kept = device.type == "cpu" and args.keep_host_memory and keep_freed_host_memory()
    precision = {"no": "fp32"}.get(args.mixed_precision, args.mixed_precision)
    report = {
        "device": str(device),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "size": args.size,
        "precision": precision,
        "compile": args.compile,
        "gradient_checkpointing": args.gradient_checkpointing,
        "host_memory_kept": kept,
        "warmup_steps": args.warmup,
    }
    names = args.configs.split(",")
    if device.type == "cuda":
        name, peak = documented_gpu_peak(device, precision)
        report["peak"] = {"device_name": name, "documented_tflops": peak / 1e12 if peak else None}
        report["configs"] = {name: run(name, args, device, peak) for name in names}
    else:
        report["configs"] = {name: run(name, args, device, None) for name in names}
        # the matmul peak, measured before every config and once more at the end: on a shared machine
        # the load changes, and the best measurement is the fairest (lowest) MFU
        measured = [config.pop("peak_before") for config in report["configs"].values()]
        measured.append(measured_cpu_peak(args.peak_matmul_size))
        peak = max(measured)
        size = args.peak_matmul_size
        report["peak"] = {
            "measured_tflops": round(peak / 1e12, 4),
            "how": f"fp32 {size}x{size} matmul, best of 5, the highest of {len(measured)} measurements in this run",
            "all_measurements_tflops": [round(m / 1e12, 4) for m in measured],
        }
        for config in report["configs"].values():
            config["mfu"] = round(config["achieved_flops_per_s"] / peak, 4)
    configs = report["configs"]
    if "audio-v1" in configs and "audio-v2" in configs:
        report["audio_targets_per_s_ratio_v2_v1"] = round(
            configs["audio-v2"]["masked_targets_per_s"] / configs["audio-v1"]["masked_targets_per_s"], 3
        )
    print(json.dumps(report))


if __name__ == "__main__":
    main()
