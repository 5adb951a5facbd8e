"""Benchmark (not a test): convert a randomly initialised base-size data2vec 1.0 audio checkpoint in
fairseq layout through the CLI and report time and peak memory as one JSON object.

The checkpoint is what fairseq writes for the released base model (``base_librispeech.yaml``): the
student, the regression head and the ``_ema`` teacher of the transformer layers, with a resolved
``cfg``. It is built by writing the tensors of a base-size ``Data2VecAudioForPreTraining`` (created on
the meta device, so only shapes) under fairseq's names, filled with random values.

The conversion runs in a fresh Python process through the CLI's ``main`` (the code path of
``python -m data2vec_hf.conversion``); the process reports its own peak resident set size (``VmHWM``,
which counts the memory-mapped checkpoint pages it touched) when it ends, and that is compared with
the checkpoint's size. Goal: under 30 s and under 2x the checkpoint size.

    python benchmarks/convert_benchmark.py [--export encoder|pretraining] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

BASE_MODEL_CFG = {
    "_name": "data2vec_audio",
    "extractor_mode": "layer_norm",
    "encoder_layers": 12,
    "encoder_embed_dim": 768,
    "encoder_ffn_embed_dim": 3072,
    "encoder_attention_heads": 12,
    "activation_fn": "gelu",
    "layer_type": "transformer",
    "dropout": 0.1,
    "attention_dropout": 0.1,
    "activation_dropout": 0.0,
    "encoder_layerdrop": 0.05,
    "dropout_input": 0.0,
    "dropout_features": 0.0,
    "layer_norm_first": False,
    "conv_feature_layers": "[(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512,2,2)] + [(512,2,2)]",
    "conv_bias": False,
    "feature_grad_mult": 1.0,
    "mask_length": 10,
    "mask_prob": 0.65,
    "conv_pos": 95,
    "conv_pos_groups": 16,
    "pos_conv_depth": 5,
    "loss_beta": 0.0,
    "loss_scale": None,
    "average_top_k_layers": 8,
    "instance_norm_target_layer": True,
    "layer_norm_target_layer": False,
    "instance_norm_targets": False,
    "layer_norm_targets": False,
    "batch_norm_target_layer": False,
    "group_norm_target_layer": False,
    "ema_decay": 0.999,
    "ema_end_decay": 0.9999,
    "ema_anneal_end_step": 30000,
    "ema_transformer_only": True,
    "ema_layers_only": True,
    "min_target_var": 0.1,
    "min_pred_var": 0.01,
}
BASE_TASK_CFG = {"_name": "audio_pretraining", "data": "/data", "normalize": True, "sample_rate": 16000}

# data2vec_hf pretraining names -> fairseq names (the inverse of conversion/fairseq_v1.AUDIO_MAPPING,
# written out independently)
_LAYER = {
    r"attention\.(k_proj|v_proj|q_proj|out_proj)\.(weight|bias)": r"self_attn.\1.\2",
    r"layer_norm\.(weight|bias)": r"self_attn_layer_norm.\1",
    r"feed_forward\.intermediate_dense\.(weight|bias)": r"fc1.\1",
    r"feed_forward\.output_dense\.(weight|bias)": r"fc2.\1",
    r"final_layer_norm\.(weight|bias)": r"final_layer_norm.\1",
}
INVERSE = [
    (r"data2vec_audio\.masked_spec_embed", "mask_emb"),
    (
        r"data2vec_audio\.feature_extractor\.conv_layers\.(\d+)\.conv\.(weight|bias)",
        r"feature_extractor.conv_layers.\1.0.\2",
    ),
    (
        r"data2vec_audio\.feature_extractor\.conv_layers\.(\d+)\.layer_norm\.(weight|bias)",
        r"feature_extractor.conv_layers.\1.2.1.\2",
    ),
    (r"data2vec_audio\.feature_projection\.layer_norm\.(weight|bias)", r"layer_norm.\1"),
    (r"data2vec_audio\.feature_projection\.projection\.(weight|bias)", r"post_extract_proj.\1"),
    (
        r"data2vec_audio\.encoder\.pos_conv_embed\.layers\.(\d+)\.conv\.(weight|bias)",
        r"encoder.pos_conv.\1.0.\2",
    ),
    (r"data2vec_audio\.encoder\.layer_norm\.(weight|bias)", r"encoder.layer_norm.\1"),
    (r"final_proj\.(weight|bias)", r"final_proj.\1"),
]


# the CLI in this process, then the process's own peak RSS (Linux: VmHWM in /proc/self/status)
RUNNER = (
    "import sys\n"
    "from data2vec_hf.conversion.cli import main\n"
    "code = main(sys.argv[1:])\n"
    "print([l for l in open('/proc/self/status') if l.startswith('VmHWM')][0], end='')\n"
    "sys.exit(code)\n"
)


def fairseq_name(name: str) -> tuple[str, str] | None:
    """``(section, fairseq key)`` of a data2vec_hf pretraining tensor name; section '' or '_ema'."""
    for pattern, target in INVERSE:
        if re.fullmatch(pattern, name):
            return "", re.sub(pattern, target, name)
    for prefix, section, out in (
        ("data2vec_audio.encoder.layers.", "", "encoder.layers."),
        ("teacher.model.layers.", "_ema", "layers."),
    ):
        if name.startswith(prefix):
            index, rest = name[len(prefix) :].split(".", 1)
            for pattern, target in _LAYER.items():
                if re.fullmatch(pattern, rest):
                    return section, f"{out}{index}.{re.sub(pattern, target, rest)}"
    if name.startswith("teacher.model.layer_norm."):
        return "_ema", "layer_norm." + name.rsplit(".", 1)[1]
    raise KeyError(name)


def base_checkpoint(path: Path, seed: int = 0) -> int:
    """Write the random base-size fairseq checkpoint; returns its size in bytes."""
    from data2vec_hf import Data2VecAudioForPreTraining
    from data2vec_hf.conversion.fairseq_v1 import audio_config

    config = audio_config(BASE_MODEL_CFG)
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in Data2VecAudioForPreTraining(config).state_dict().items()}
    generator = torch.Generator().manual_seed(seed)
    model, ema = {}, {}
    for name, shape in shapes.items():
        section, key = fairseq_name(name)
        tensor = torch.randn(shape, generator=generator) * 0.02
        (ema if section == "_ema" else model)[key] = tensor
    model["_ema"] = ema
    checkpoint = {
        "args": None,
        "cfg": {"model": BASE_MODEL_CFG, "task": BASE_TASK_CFG, "common": {"fp16": True}},
        "model": model,
        "criterion": {},
        "optimizer_history": [{"criterion_name": "ModelCriterion", "num_updates": 400000}],
        "task_state": {},
        "extra_state": {},
    }
    torch.save(checkpoint, path)
    return path.stat().st_size


def run(export: str, keep: Path | None) -> dict:
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        checkpoint = scratch / "audio_base_random.pt"
        size = base_checkpoint(checkpoint)
        output = (keep or scratch) / "converted"
        command = [
            sys.executable,
            "-c",
            RUNNER,
            "--checkpoint",
            str(checkpoint),
            "--output_dir",
            str(output),
            "--export",
            export,
            "--overwrite",
        ]
        started = time.perf_counter()
        result = subprocess.run(command, capture_output=True, text=True)
        seconds = time.perf_counter() - started
        if result.returncode != 0:
            raise SystemExit(f"conversion failed:\n{result.stderr}")
        match = re.search(r"done in ([\d.]+) s", result.stderr)
        peak_mb = int(re.search(r"VmHWM:\s+(\d+) kB", result.stdout).group(1)) / 1024
        output_mb = sum(p.stat().st_size for p in output.iterdir()) / 2**20
    checkpoint_mb = size / 2**20
    return {
        "benchmark": "convert data2vec 1.0 audio base (random, fairseq layout, with _ema)",
        "export": export,
        "seconds": round(seconds, 2),  # the whole process: interpreter start, imports, conversion
        "conversion_seconds": float(match.group(1)) if match else None,
        "peak_rss_mb": round(peak_mb, 1),
        "checkpoint_mb": round(checkpoint_mb, 1),
        "output_mb": round(output_mb, 1),
        "ratio": round(peak_mb / checkpoint_mb, 3),
        "goal": "seconds < 30 and ratio < 2",
        "ok": seconds < 30 and peak_mb < 2 * checkpoint_mb,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--export", default="encoder", choices=("encoder", "pretraining"))
    parser.add_argument("--keep", type=Path, help="keep the converted folder under this directory")
    args = parser.parse_args()
    print(json.dumps(run(args.export, args.keep)))


if __name__ == "__main__":
    main()
