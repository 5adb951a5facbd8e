"""The loop's own gradients are fairseq's: the training step of ``PretrainingLoop`` (``micro_batch`` then
``update``), run on the fixture's batch with fairseq's weights, leaves in ``p.grad`` — before clipping,
as the loop hands them to the optimizer — the gradients fairseq's trainer computed (fixtures in
``tests/fixtures/fairseq-train``). Nothing is rescaled here: the loop itself sums the loss over masked
positions and divides once by the update's masked count, so a loop that divided by anything else (the
accumulation steps, the processes) or not at all fails.

The loop is built around the fixture model with only what its step uses (an accelerator, the
replicated strategy, the statistics): the rest of a run (data, optimizer, checkpoints) is not part of
the gradient."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, PartialState
from data2vec_hf.pretraining.guards import SigtermWatch
from data2vec_hf.pretraining.parallel import make_parallel
from data2vec_hf.pretraining.statistics import UpdateStatistics
from data2vec_hf.pretraining.trainer import PretrainingLoop, Progress

sys.path.insert(0, str(Path(__file__).parent))
from test_fairseq_training_step import MODELS, fixture, our_model, without_dropout  # noqa: E402


class Captured(Exception):
    """Raised by the patched clipping: the update's gradients are taken, nothing is stepped."""


def fixture_batch(name: str, ref: dict) -> dict:
    """The fixture's batch and masks as the model's keyword arguments (as the loop's collator gives)."""
    if name == "d2v1_audio":
        return {"input_values": ref["source"], "mask_time_indices": ref["pretrain.mask"]}
    if name == "d2v1_text":
        mask = ref["pretrain.mask"]
        labels = torch.where(
            mask, ref["pretrain.target_tokens"], torch.full_like(mask, -100, dtype=torch.long)
        )
        return {"input_ids": ref["pretrain.src_tokens_masked"], "labels": labels}
    argument = {"d2v2_audio": "mask_time_indices", "d2v2_image": "bool_masked_pos"}.get(
        name, "masked_positions"
    )
    inputs = {"d2v2_audio": "input_values", "d2v2_image": "pixel_values"}.get(name, "input_ids")
    return {inputs: ref["source"], argument: ref["pretrain.mask"]}


def loop_around(model) -> PretrainingLoop:
    """A loop whose step runs on ``model`` in one process (what ``micro_batch`` and ``update`` read)."""
    loop = PretrainingLoop.__new__(PretrainingLoop)
    loop.accelerator = Accelerator(cpu=True)
    loop.parallel = make_parallel(loop.accelerator, None)
    loop.model = loop.unwrapped = model
    loop.trainable = [p for p in model.parameters() if p.requires_grad]
    loop.statistics = UpdateStatistics(model.config.hidden_size, "cpu")
    loop.progress, loop.accounting, loop.nonfinite_examples = Progress(), None, []
    loop.sigterm = SigtermWatch(loop.statistics.request_stop)
    loop.args = SimpleNamespace(max_nonfinite_updates=3, gradient_accumulation_steps=1)
    return loop


@pytest.mark.parametrize("name", MODELS)
def test_the_loops_normalised_gradients_are_fairseqs(name):
    checkpoint, ref, train, info = fixture(name)
    model, mapping = our_model(name, checkpoint)
    without_dropout(model)
    loop = loop_around(model)
    gradients = {}

    def capture():
        gradients.update({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
        raise Captured

    loop.clip_gradients = capture
    try:
        loop.micro_batch(fixture_batch(name, ref))
        with pytest.raises(Captured):
            loop.update()
    finally:
        AcceleratorState._reset_state(True)
        PartialState._reset_state()
    assert loop.progress.batches_in_epoch == 1
    zero_by_construction = set(info["zero_by_construction"]["params"])
    compared = 0
    for key in (k for k in train if k.startswith("grad.")):
        fairseq_name = key[len("grad.") :]
        if fairseq_name in zero_by_construction or fairseq_name.endswith("qkv.bias"):
            continue  # rounding noise in fairseq's values (test_fairseq_training_step checks them)
        target = mapping.target_of(fairseq_name)
        expected = train[key].reshape(gradients[target].shape)
        tolerance = 1e-4 * expected.abs().max().item() + 1e-9
        assert (gradients[target] - expected).abs().max().item() <= tolerance, target
        compared += 1
    assert compared > 10
