#!/usr/bin/env python
"""Pretraining throughput of data2vec 1.0 vs 2.0 audio at the same encoder size, in one process.

Each version runs full training steps (forward, backward, AdamW step, EMA update) on the same random
16 kHz clips and reports:

- ``samples_per_s``: original samples per second (each counted once, whatever the clone count M);
- ``masked_targets_per_s``: masked positions regressed per second, every clone counted — the learning
  signal per second, which is what 2.0 buys;
- ``peak_mem_mb``: peak GPU memory, or on CPU the peak growth of the process RSS during the run.

Prints one JSON object; ``targets_per_s_ratio`` = v2 / v1. Defaults are the released base settings
(v1: mask 0.65 / length 10; v2: mask 0.5 / length 5, M = 8) on 2 x 4 s clips.
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time

import data2vec_hf
import torch

BASE = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072)
TINY = dict(
    hidden_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=128,
    conv_dim=(64,) * 7,
    num_conv_pos_embedding_groups=4,
    average_top_k_layers=2,
)


class PeakMemory:
    """Peak CUDA memory, or peak RSS growth sampled every 5 ms on CPU."""

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


def run(model, batch, steps: int, warmup: int, device) -> dict:
    model.to(device).train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    batch = {k: v.to(device) for k, v in batch.items()}
    masked = 0

    def step(i):
        out = model(**batch)
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        model.ema_step(i + 1)
        return int(out.num_masked)

    for i in range(warmup):
        step(i)
    with PeakMemory(device) as memory:
        if device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        for i in range(steps):
            masked += step(warmup + i)
        if device.type == "cuda":
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - started
    samples = steps * next(iter(batch.values())).shape[0]
    return {
        "samples_per_s": round(samples / elapsed, 4),
        "masked_targets_per_s": round(masked / elapsed, 2),
        "masked_per_step": masked // steps,
        "seconds_per_step": round(elapsed / steps, 3),
        "peak_mem_mb": round(memory.peak / 2**20, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument(
        "--size", choices=["base", "tiny"], default="base", help="encoder size of both versions"
    )
    parser.add_argument("--batch_size", type=int, default=2, help="clips per step")
    parser.add_argument("--seconds", type=float, default=4.0, help="clip length")
    parser.add_argument(
        "--clone_batch", type=int, default=8, help="data2vec 2.0 masked clones per sample (M)"
    )
    parser.add_argument("--steps", type=int, default=4, help="timed steps per version")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()

    torch.manual_seed(0)
    device = torch.device(args.device)
    size = BASE if args.size == "base" else TINY
    batch = {"input_values": torch.randn(args.batch_size, int(16000 * args.seconds))}
    v1 = data2vec_hf.Data2VecAudioForPreTraining(data2vec_hf.Data2VecAudioPreTrainingConfig(**size))
    result = {
        "device": str(device),
        "size": args.size,
        "batch_size": args.batch_size,
        "seconds": args.seconds,
    }
    result["v1"] = run(v1, batch, args.steps, args.warmup, device)
    del v1
    v2_size = {k: v for k, v in size.items()}
    v2 = data2vec_hf.Data2Vec2AudioForPreTraining(
        data2vec_hf.Data2Vec2AudioConfig(**v2_size, clone_batch=args.clone_batch)
    )
    result["v2"] = run(v2, batch, args.steps, args.warmup, device)
    result["v2"]["clone_batch"] = args.clone_batch
    result["targets_per_s_ratio"] = round(
        result["v2"]["masked_targets_per_s"] / result["v1"]["masked_targets_per_s"], 3
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
