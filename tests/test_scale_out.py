"""Scale-out and speed: FSDP2 with a sharded EMA teacher, per-process data, multi-node, precision,
gradient checkpointing and compilation — on CPU, with gloo processes."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn
from transformers.modeling_layers import GradientCheckpointingLayer

sys.path.insert(0, str(Path(__file__).parent))
from test_pretraining_scripts import ROOT, TINY_TEXT, TINY_V2, audio_folder  # noqa: E402
from test_training_fidelity import NO_DROPOUT_V2, one_update, parse, reset_accelerate  # noqa: E402

V2_AUDIO = TINY_V2["audio"] + NO_DROPOUT_V2
V1_TEXT = TINY_TEXT + ",hidden_dropout_prob=0.0,attention_probs_dropout_prob=0.0"
FSDP = [
    "--use_fsdp", "--fsdp_version", "2", "--fsdp_auto_wrap_policy", "TRANSFORMER_BASED_WRAP",
    "--fsdp_state_dict_type", "SHARDED_STATE_DICT",
]  # fmt: skip
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def port() -> str:
    """A port that is free now (the OS picks it), for the rendezvous of one launch."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return str(probe.getsockname()[1])


def launch(script: str, args: list[str], how: list[str], num_processes: int = 2, **popen):
    """``accelerate launch`` with CPU processes: ``how`` is ``FSDP`` or ``["--multi_gpu"]`` (DDP)."""
    command = [
        sys.executable, "-m", "accelerate.commands.launch", *how, "--num_processes", str(num_processes), "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", port(),
        str(ROOT / "pretraining" / script), *args,
    ]  # fmt: skip
    if popen:
        return subprocess.Popen(command, env=ENV, cwd=ROOT, start_new_session=True, **popen)
    result = subprocess.run(command, env=ENV, cwd=ROOT, capture_output=True, text=True, timeout=600)
    # no second try: a rank that aborts (SIGABRT, no Python traceback) fails the test, with the lines
    # that say why it died first in the message
    errors = [line for line in result.stderr.splitlines() if "Error" in line or "error:" in line]
    assert result.returncode == 0, crash_lines(result.stderr) + "\n".join(errors[:20]) + result.stderr[-2000:]
    return result


def crash_lines(stderr: str) -> str:
    """The lines of a launch's stderr that say why a process died in C++ (they carry no traceback)."""
    keys = ("terminate called", "what()", "abort", "Abort", "corrupt", "free(", "gloo", "Gloo", "Assertion")
    return "\n".join(line for line in stderr.splitlines() if any(key in line for key in keys))[-3000:] + "\n"


def summary(out: Path) -> dict:
    return json.loads((out / "train_summary.json").read_text())


def weights(out: Path) -> dict[str, torch.Tensor]:
    return load_file(out / "pretraining_model" / "model.safetensors")


def worst_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


@pytest.fixture(scope="module")
def text_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("text") / "train.txt"
    path.write_text(
        "\n".join(f"the quick brown fox number {i} jumps over the lazy dog {i % 7}" for i in range(120))
    )
    return path


def text_args(out: Path, text_file: Path, steps: int = 5) -> list[str]:
    return [
        "--output_dir", str(out), "--train_file", str(text_file), "--config_overrides", V1_TEXT,
        "--max_seq_length", "64", "--bpe_vocab_size", "300", "--max_train_steps", str(steps),
        "--per_device_train_batch_size", "2", "--learning_rate", "1e-3", "--logging_steps", "1",
        "--cache_dir", str(out.parent / "cache"),
    ]  # fmt: skip


def audio_args(out: Path, data: Path, steps: int = 12) -> list[str]:
    return [
        "--output_dir", str(out), "--train_dir", str(data), "--version", "2", "--config_overrides", V2_AUDIO,
        "--min_length_seconds", "0", "--max_train_steps", str(steps), "--per_device_train_batch_size", "2",
        "--learning_rate", "1e-3", "--checkpointing_steps", "3", "--checkpoints_total_limit", "5",
        "--logging_steps", "1", "--cache_dir", str(out.parent / "cache"),
    ]  # fmt: skip


@pytest.fixture(scope="module")
def audio_runs(tmp_path_factory):
    """The same 2.0 audio run with FSDP2 and with DDP (two gloo processes each)."""
    root = tmp_path_factory.mktemp("audio")
    # 16 clips: 4 updates of 2 processes x 2 clips an epoch, so checkpoints 3, 6 and 9 lie inside epochs
    data = audio_folder(root / "data", count=16, seconds=(0.4, 0.6))
    launch("pretrain_audio.py", audio_args(root / "fsdp", data), FSDP)
    launch("pretrain_audio.py", audio_args(root / "ddp", data), ["--multi_gpu"])
    return root, data


def assert_sharded(out: Path):
    counts = summary(out)["parameters_per_process"]
    for part in ("student", "teacher"):
        local, total = counts[part], counts[f"{part}_total"]
        assert sum(local) == total and all(0.4 * total <= n <= 0.6 * total for n in local), (part, counts)


def test_fsdp_equals_ddp_and_shards_student_and_teacher_v2(audio_runs):
    root, _ = audio_runs
    fsdp, ddp = root / "fsdp", root / "ddp"
    assert "FSDP2 over 2 process(es)" in summary(fsdp)["parallelism"]
    assert "replicated" in summary(ddp)["parallelism"]
    assert_sharded(fsdp)
    assert (
        summary(ddp)["parameters_per_process"]["teacher"]
        == [summary(ddp)["parameters_per_process"]["teacher_total"]] * 2
    )
    assert worst_difference(weights(fsdp), weights(ddp)) <= 1e-5  # student and teacher
    checkpoint = fsdp / "checkpoints" / "step-12"
    shards = sorted(p.name for p in (checkpoint / "sharded_model").iterdir())
    assert shards == [".metadata", "__0_0.distcp", "__1_0.distcp"]


def test_fsdp_resume_after_sigkill_matches_the_uninterrupted_run(audio_runs):
    root, data = audio_runs
    killed = root / "killed"
    log = root / "killed.stderr"
    with open(log, "w") as stderr:
        process = launch(
            "pretrain_audio.py", audio_args(killed, data), FSDP, stdout=subprocess.DEVNULL, stderr=stderr
        )
    deadline = time.time() + 300
    while not (killed / "checkpoints" / "step-3").exists():
        assert process.poll() is None, (
            "the run ended before its first checkpoint:\n" + log.read_text()[-3000:]
        )
        assert time.time() < deadline
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGKILL)
    assert process.wait(timeout=60) == -signal.SIGKILL  # the launcher died of the kill, not of its own
    assert not (killed / "checkpoints" / "step-12").exists()
    launch("pretrain_audio.py", audio_args(killed, data) + ["--resume_from_checkpoint", "latest"], FSDP)
    assert summary(killed)["updates"] == 12
    assert worst_difference(weights(killed), weights(root / "fsdp")) <= 1e-6


def resume_on(root: Path, data: Path, written: Path, step: int, out: Path, how: list[str], processes: int):
    """Resume a copy of ``written``'s checkpoint ``step`` on ``processes`` x (4 / ``processes``)
    micro-batches of 2 clips (the 4 clips of every update stay the same) and run it to the end."""
    (out / "checkpoints").mkdir(parents=True)
    shutil.copytree(written / "checkpoints" / f"step-{step}", out / "checkpoints" / f"step-{step}")
    args = audio_args(out, data) + ["--gradient_accumulation_steps", str(2 // processes)]
    result = launch(
        "pretrain_audio.py", args + ["--resume_from_checkpoint", "latest"], how, num_processes=processes
    )
    assert f"resumed from {out / 'checkpoints' / f'step-{step}'} at update {step}" in result.stderr
    assert "resuming on another topology" in result.stderr, result.stderr[-3000:]
    return result


@pytest.mark.parametrize("parallelism", ["ddp", "fsdp"])
def test_resume_on_another_topology_gives_the_weights_of_the_uninterrupted_run(audio_runs, parallelism):
    """2 processes x 1 micro-batch -> 1 process x 2 micro-batches, and back: the same examples, order
    and masks, so the weights of the uninterrupted 2 x 1 run (torch.distributed.checkpoint reshards the
    FSDP2 checkpoint over the new number of processes)."""
    root, data = audio_runs
    how = FSDP if parallelism == "fsdp" else ["--multi_gpu"]
    one = root / f"{parallelism}_1x2"
    resume_on(root, data, root / parallelism, 6, one, how if parallelism == "fsdp" else ["--cpu"], 1)
    assert summary(one)["num_processes"] == 1 and summary(one)["updates"] == 12
    assert worst_difference(weights(one), weights(root / parallelism)) <= 1e-5
    two = root / f"{parallelism}_1x2_2x1"
    resume_on(root, data, one, 9, two, how, 2)  # written by 1 x 2, continued by 2 x 1
    assert summary(two)["num_processes"] == 2 and summary(two)["updates"] == 12
    assert worst_difference(weights(two), weights(root / parallelism)) <= 1e-5


def test_fsdp_export_loads_in_a_fresh_process(audio_runs):
    out = audio_runs[0] / "fsdp"
    code = (
        "import data2vec_hf, torch; from transformers import AutoModel; "
        f"m = AutoModel.from_pretrained({str(out)!r}); "
        "print(type(m).__name__, m(torch.randn(1, 4000)).last_hidden_state.shape)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], env=ENV, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith("Data2Vec2AudioModel")


@pytest.fixture(scope="module")
def text_runs(tmp_path_factory, text_file):
    root = tmp_path_factory.mktemp("text_runs")
    launch("pretrain_text.py", text_args(root / "fsdp", text_file), FSDP)
    launch("pretrain_text.py", text_args(root / "ddp", text_file), ["--multi_gpu"])
    return root


def test_fsdp_equals_ddp_v1_text(text_runs):
    assert_sharded(text_runs / "fsdp")
    assert worst_difference(weights(text_runs / "fsdp"), weights(text_runs / "ddp")) <= 1e-5
    code = f"from transformers import AutoModel; print(type(AutoModel.from_pretrained({str(text_runs / 'fsdp')!r})).__name__)"
    result = subprocess.run(
        [sys.executable, "-c", code], env=ENV, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    # plain transformers, no import of data2vec_hf
    assert result.stdout.strip() == "Data2VecTextModel", result.stderr[-2000:]


def test_two_nodes_on_loopback_equal_one_node_with_two_processes(text_runs, text_file, tmp_path):
    """Two torchrun invocations (--nnodes 2, one process each) rendezvous on 127.0.0.1 and end with the
    weights of one node running two processes."""
    out = tmp_path / "two_nodes"
    rendezvous = port()
    nodes = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--nnodes",
                "2",
                "--nproc_per_node",
                "1",
                "--node_rank",
                str(rank),
                "--master_addr",
                "127.0.0.1",
                "--master_port",
                rendezvous,
                str(ROOT / "pretraining" / "pretrain_text.py"),
                *text_args(out, text_file),
            ],  # fmt: skip
            env=ENV,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for rank in (0, 1)
    ]
    errors = [node.communicate(timeout=600)[1] for node in nodes]
    assert all(node.returncode == 0 for node in nodes), errors[0][-3000:] + errors[1][-3000:]
    assert summary(out)["num_processes"] == 2
    assert worst_difference(weights(out), weights(text_runs / "ddp")) <= 1e-5


def test_an_fsdp_request_that_cannot_be_honoured_is_an_error(text_file, tmp_path):
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--use_fsdp", "--fsdp_version", "1", "--num_processes",
        "1", "--main_process_port", port(), str(ROOT / "pretraining" / "pretrain_text.py"),
        *text_args(tmp_path / "out", text_file),
    ]  # fmt: skip
    result = subprocess.run(command, env=ENV, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0 and "data2vec-hf shards with FSDP2 only" in result.stderr


# --------------------------------------------------------------------------------------- streaming


# ------------------------------------------------------------------------- precision, memory, compile


def audio_update(tmp_path, *extra, steps: int = 1, setup=None):
    """One update (``steps``) of a tiny 2.0 audio run through the real loop (``one_update``); ``setup(loop)``
    may install hooks on the built loop before it trains."""
    data = audio_folder(tmp_path / "data", count=8, seconds=(0.4, 0.6))
    argv = [
        "--output_dir", str(tmp_path / f"out{len(list(tmp_path.iterdir()))}"), "--train_dir", str(data),
        "--version", "2", "--config_overrides", V2_AUDIO, "--min_length_seconds", "0",
        "--max_train_steps", str(steps), "--per_device_train_batch_size", "4", "--learning_rate", "1e-3",
        "--cache_dir", str(tmp_path / "cache"), *extra,
    ]  # fmt: skip
    from data2vec_hf.pretraining import pretrain_audio

    return one_update(pretrain_audio.SPEC, argv, setup=setup)


def student_blocks(model) -> dict:
    """The student's transformer blocks by name (the EMA teacher has its own, under ``teacher.``; the
    audio CNN's conv layers are GradientCheckpointingLayers too, but no transformer blocks)."""
    prefix = model.base_model_prefix
    blocks = {f"{prefix}.blocks.{i}": block for i, block in enumerate(getattr(model, prefix).blocks)}
    assert len(blocks) == model.config.num_hidden_layers
    assert all(isinstance(block, GradientCheckpointingLayer) for block in blocks.values())
    return blocks


def block_linears(model) -> dict:
    """Every nn.Linear inside the student's blocks (attention q/k/v/out, FFN fc1/fc2), by full name."""
    linears = {
        f"{block_name}.{name}": module
        for block_name, block in student_blocks(model).items()
        for name, module in block.named_modules()
        if isinstance(module, nn.Linear)
    }
    assert len(linears) >= 4 * model.config.num_hidden_layers, sorted(linears)
    return linears


def watch_precision(seen: dict):
    """A ``setup`` for :func:`audio_update` that records, during the real training step, the output dtype
    of every Linear of the student's blocks (its matmul ran in that dtype), the dtypes of the loss, the
    teacher's targets and the predictions as the model computes them (inside accelerate's autocast, before
    its wrapper casts the outputs to fp32), and the teacher's weights before the update."""

    def setup(loop):
        model = loop.unwrapped
        seen["teacher_before"] = {n: p.detach().clone() for n, p in model.teacher.named_parameters()}
        seen["linear"] = {}
        for name, linear in block_linears(model).items():
            linear.register_forward_hook(
                lambda module, args, out, name=name: seen["linear"].setdefault(name, set()).add(out.dtype)
            )
        objective = model._objective

        def recorded(prediction, target, *args, **kwargs):
            out = objective(prediction, target, *args, **kwargs)
            seen.update(prediction=prediction.dtype, target=out.target.dtype, loss=out.loss.dtype)
            return out

        model._objective = recorded
        seen["loop"] = loop

    return setup


def test_bf16_runs_the_student_blocks_in_bf16_and_keeps_teacher_targets_and_loss_in_fp32(tmp_path):
    """--mixed_precision bf16 through the real loop: the student's block matmuls run in bfloat16, while
    the loss, the teacher's targets and the EMA teacher's weights (after its step) stay float32."""
    grads, weights32, loss32 = audio_update(tmp_path)
    seen = {}
    watch = watch_precision(seen)
    grads16, weights16, loss16 = audio_update(tmp_path, "--mixed_precision", "bf16", setup=watch)
    linears = block_linears(seen["loop"].unwrapped)
    assert seen["linear"] == {name: {torch.bfloat16} for name in linears}  # every one ran, in bf16 only
    assert seen["prediction"] == torch.bfloat16  # the decoder ran under autocast too
    assert seen["target"] == torch.float32 and seen["loss"] == torch.float32
    assert seen["loop"].progress.num_updates == 1
    teacher = {n[len("teacher.") :]: w for n, w in weights16.items() if n.startswith("teacher.")}
    assert teacher.keys() == seen["teacher_before"].keys()
    assert all(w.dtype == torch.float32 for w in teacher.values())
    assert any(not torch.equal(w, seen["teacher_before"][n]) for n, w in teacher.items())  # the EMA stepped
    assert loss16 == pytest.approx(loss32, rel=0.02)
    assert grads16.keys() == grads.keys() and all(torch.isfinite(g).all() for g in grads16.values())
    assert all(g.dtype == torch.float32 for g in grads16.values())  # fp32 master weights and gradients


def test_gradient_checkpointing_recomputes_the_student_blocks_and_gives_the_same_gradients(tmp_path):
    """With --gradient_checkpointing every student block runs twice in an update (forward, and again in
    the backward pass), without it once; the teacher's blocks run once either way; same gradients.

    The forwards are counted on the Linears inside the blocks: transformers checkpoints a block's
    ``forward``, so hooks on the block module itself stay outside the checkpoint and fire once."""
    runs = {}
    for checkpointing in (False, True):
        calls, teacher_calls = Counter(), Counter()

        def setup(loop, calls=calls, teacher_calls=teacher_calls):
            for name, linear in block_linears(loop.unwrapped).items():
                linear.register_forward_hook(lambda *_, name=name, calls=calls: calls.update([name]))
            for i, block in enumerate(loop.unwrapped.teacher.model.blocks):
                block.register_forward_hook(lambda *_, i=i: teacher_calls.update([i]))
            runs.setdefault("linears", sorted(block_linears(loop.unwrapped)))

        extra = ["--gradient_checkpointing"] if checkpointing else []
        runs[checkpointing] = audio_update(tmp_path, *extra, setup=setup), calls, teacher_calls
    (grads, _, loss), calls, teacher_calls = runs[False]
    (checkpointed, _, loss_checkpointed), calls_checkpointed, teacher_checkpointed = runs[True]
    assert calls == dict.fromkeys(runs["linears"], 1)
    assert calls_checkpointed == dict.fromkeys(runs["linears"], 2)  # recomputed in the backward pass
    assert len(teacher_calls) == 2 and set(teacher_calls.values()) == {1}
    assert teacher_checkpointed == teacher_calls
    assert loss_checkpointed == pytest.approx(loss, rel=1e-6)
    assert checkpointed.keys() == grads.keys()
    for name, grad in grads.items():
        torch.testing.assert_close(checkpointed[name], grad, rtol=0, atol=1e-5)


def test_fp16_without_an_accelerator_is_refused(tmp_path, capsys, monkeypatch):
    """On a CPU accelerate keeps ``mixed_precision="fp16"`` but gives neither autocast nor a GradScaler:
    the run would log fp16 and compute fp32 without loss scaling. It stops before training (exit 2).
    (On a machine with a GPU, the run is made to see none.)"""
    monkeypatch.setattr(torch.accelerator, "is_available", lambda: False)
    from data2vec_hf.pretraining import pretrain_audio
    from data2vec_hf.pretraining.trainer import run

    data = audio_folder(tmp_path / "data", count=4, seconds=(0.4, 0.6))
    out = tmp_path / "out"
    argv = [
        "--output_dir", str(out), "--train_dir", str(data), "--version", "2", "--config_overrides", V2_AUDIO,
        "--min_length_seconds", "0", "--max_train_steps", "1", "--per_device_train_batch_size", "4",
        "--cache_dir", str(tmp_path / "cache"), "--mixed_precision", "fp16",
    ]  # fmt: skip
    try:
        code = run(pretrain_audio.SPEC, argv)
    finally:
        reset_accelerate()
    error = capsys.readouterr().err
    assert code == 2, error[-2000:]
    assert "error: --mixed_precision fp16 needs a GPU (loss scaling); on CPU use bf16 or no" in error
    assert not (out / "checkpoints").exists() and not (out / "train_summary.json").exists()


def test_an_fp16_overflow_skips_the_update_and_the_ema_step(tmp_path, monkeypatch):
    """The fp16 update path against a real loss scaler. accelerate builds a GradScaler only on a GPU;
    here it gets one (and autocast) as it would there, before the model and optimizer are prepared (on a
    GPU machine, this scaler replaces accelerate's). Its first scale (2^127) overflows the scaled loss:
    that update must be skipped — no optimizer step, not counted, no scheduler step, the EMA teacher
    bitwise unchanged, not taken for a NaN loss — and the scale lowered (by 2^-127, to 1), after which
    the next update does step.

    The loop's AdamW is fused: the scaler calls its ``step`` also on an overflow (the kernel skips), so
    accelerate's own skip flag stays False; ``parallel.report_skipped_steps`` sets it."""
    from data2vec_hf.pretraining import trainer

    make_parallel = trainer.make_parallel

    def with_scaler(accelerator, request):
        assert accelerator.mixed_precision == "fp16"
        device = accelerator.device.type
        accelerator.scaler = torch.amp.GradScaler(device, init_scale=2.0**127, backoff_factor=2.0**-127)
        accelerator.native_amp = True  # accelerate's fp16 setting on a GPU: autocast in the forward
        return make_parallel(accelerator, request)

    monkeypatch.setattr(trainer, "make_parallel", with_scaler)
    seen, states, finite = {}, [], []

    def setup(loop):
        watch_precision(seen)(loop)
        assert getattr(loop.optimizer.optimizer, "_step_supports_amp_scaling", False)  # fused AdamW
        student = {n: p.detach().clone() for n, p in loop.unwrapped.named_parameters() if p.requires_grad}
        seen["student_before"] = student
        update, clip = loop.update, loop.clip_gradients

        def clip_recorded():  # the gradients of the whole update, still scaled
            finite.append(all(torch.isfinite(p.grad).all() for p in loop.trainable if p.grad is not None))
            return clip()

        loop.clip_gradients = clip_recorded

        def recorded():
            metrics = update()
            model = loop.unwrapped
            states.append({
                "skipped": metrics is None,
                "num_updates": loop.progress.num_updates,
                "nonfinite_total": loop.progress.nonfinite_total,
                "scheduler_steps": loop.scheduler.scheduler.last_epoch,
                "scale": loop.accelerator.scaler.get_scale(),
                "teacher": {n: p.detach().clone() for n, p in model.teacher.named_parameters()},
                "student": {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad},
                "adam_steps": {int(state["step"]) for state in loop.optimizer.state.values()},
            })  # fmt: skip
            return metrics

        loop.update = recorded

    _, weights, _ = audio_update(tmp_path, "--mixed_precision", "fp16", setup=setup)
    loop = seen["loop"]
    assert seen["linear"] and all(dtypes == {torch.float16} for dtypes in seen["linear"].values())
    assert seen["loss"] == torch.float32
    assert [state["skipped"] for state in states] == [True, False]
    overflow, sane = states
    assert finite == [False, True]  # the scaled gradients overflowed, then did not
    assert overflow["num_updates"] == 0 and overflow["scheduler_steps"] == 0
    assert overflow["nonfinite_total"] == 0  # a scaler skip is not a NaN loss
    assert overflow["scale"] == 1.0  # lowered
    assert overflow["adam_steps"] <= {0}  # AdamW's step count (its bias correction) did not advance
    assert overflow["student"].keys() == seen["student_before"].keys()
    assert all(torch.equal(overflow["student"][n], w) for n, w in seen["student_before"].items())
    before = seen["teacher_before"]
    assert overflow["teacher"].keys() == before.keys()
    assert all(torch.equal(overflow["teacher"][n], w) for n, w in before.items())  # bitwise unchanged
    assert sane["num_updates"] == 1 and sane["scheduler_steps"] == 1 and sane["adam_steps"] == {1}
    assert sane["scale"] == 1.0
    assert any(not torch.equal(sane["teacher"][n], w) for n, w in before.items())  # the EMA stepped
    assert any(not torch.equal(sane["student"][n], w) for n, w in overflow["student"].items())
    assert loop.progress.num_updates == 1 and summary(Path(loop.args.output_dir))["updates"] == 1
    assert all(w.dtype == torch.float32 for n, w in weights.items() if n.startswith("teacher."))


def test_torch_compile_same_loss_and_no_recompilation_over_varying_lengths(tmp_path, monkeypatch):
    """aot_eager (dynamo's graph capture without inductor's code generation, which takes minutes on
    2 cores); lengths vary from batch to batch, yet nothing is compiled after the first update. With 9
    blocks, more than dynamo's default recompile limit: no block may fall back to eager."""
    import torch._dynamo.config as dynamo_config
    import torch._dynamo.utils as dynamo_utils

    monkeypatch.setattr(dynamo_config, "fail_on_recompile_limit_hit", True)
    monkeypatch.setattr(dynamo_config, "recompile_limit", 8)  # the default, whatever ran before
    from data2vec_hf.pretraining import pretrain_audio
    from data2vec_hf.pretraining.trainer import PretrainingLoop

    data = audio_folder(tmp_path / "data", count=12, seconds=(0.3, 0.8))
    results = {}
    for compiled in (False, True):
        dynamo_utils.counters.clear()
        argv = [
            "--output_dir", str(tmp_path / f"out{compiled}"), "--train_dir", str(data), "--version", "2",
            "--config_overrides", V2_AUDIO + ",num_hidden_layers=9", "--min_length_seconds", "0",
            "--max_train_steps", "5",
            "--per_device_train_batch_size", "2", "--cache_dir", str(tmp_path / "cache"),
        ] + (["--torch_compile", "--torch_compile_backend", "aot_eager"] if compiled else [])  # fmt: skip
        seen, shapes = [], []
        loop = PretrainingLoop(
            pretrain_audio.SPEC,
            parse(pretrain_audio.SPEC, argv),
            callbacks=[
                lambda loop, m, seen=seen: seen.append((dynamo_utils.counters["frames"]["ok"], m["loss"]))
            ],
        )
        original = loop.micro_batch

        def record(batch, shapes=shapes, original=original):
            shapes.append(tuple(batch["input_values"].shape))
            return original(batch)

        loop.micro_batch = record
        try:
            loop.train()
        finally:
            reset_accelerate()
        results[compiled] = seen, shapes
    eager, compiled = results[False][0], results[True][0]
    assert len(eager) == len(compiled) == 5, (eager, compiled)  # every update of both runs is compared
    assert len({shape[1] for shape in results[True][1]}) >= 3  # clips of several lengths
    for (_, a), (_, b) in zip(eager, compiled, strict=True):
        assert b == pytest.approx(a, abs=1e-4)
    frames = [frames for frames, _ in compiled]
    assert frames[0] > 0 and len(set(frames)) == 1  # compiled once, never again
