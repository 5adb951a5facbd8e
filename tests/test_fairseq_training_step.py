"""One training step agrees with fairseq's: the gradients of every parameter, and the parameters each
released recipe's optimizer decays (fixtures in ``tests/fixtures/fairseq-train``, see its README).

The step is the one fairseq's trainer takes with one worker: the loss summed over masked positions,
backward, gradients multiplied by 1 / sample_size (what our loop's ``update`` does; test_loop_gradients runs the loop itself), before
clipping. Dropout is off and the model in train mode, as in the fixtures.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from conftest import REFERENCE_DIR, TRAIN_REFERENCE_DIR
from data2vec_hf.conversion.fairseq_v1 import (
    AUDIO_MAPPING,
    TEXT_MAPPING,
    audio_model_from_fairseq,
    load_fairseq_checkpoint,
    text_model_from_fairseq,
)
from data2vec_hf.conversion.fairseq_v2 import model_from_fairseq_v2, pretraining_mapping
from data2vec_hf.pretraining import pretrain_audio, pretrain_text, pretrain_vision
from data2vec_hf.pretraining.arguments import apply_recipe_defaults, build_parser
from data2vec_hf.pretraining.optim import build_optimizer
from safetensors.torch import load_file
from torch import nn

MODELS = ("d2v1_audio", "d2v1_text", "d2v2_audio", "d2v2_image", "d2v2_text")
SPECS = {
    "d2v1_audio": (pretrain_audio.SPEC, 1),
    "d2v1_text": (pretrain_text.SPEC, 1),
    "d2v2_audio": (pretrain_audio.SPEC, 2),
    "d2v2_image": (pretrain_vision.SPEC, 2),
    "d2v2_text": (pretrain_text.SPEC, 2),
}


def fixture(name: str):
    train = Path(TRAIN_REFERENCE_DIR)
    return (
        load_fairseq_checkpoint(Path(REFERENCE_DIR) / f"{name}.pt"),
        load_file(Path(REFERENCE_DIR) / f"{name}.outputs.safetensors"),
        load_file(train / f"{name}.train.safetensors"),
        json.loads((train / f"{name}.train.json").read_text()),
    )


def our_model(name: str, checkpoint) -> tuple[nn.Module, object]:
    """Our pretraining model with fairseq's weights, and the fairseq → our name mapping."""
    if name == "d2v1_audio":
        return audio_model_from_fairseq(checkpoint), AUDIO_MAPPING
    if name == "d2v1_text":
        return text_model_from_fairseq(checkpoint), TEXT_MAPPING
    model = model_from_fairseq_v2(checkpoint)
    return model, pretraining_mapping(
        model.config.model_type.split("-")[1].upper().replace("VISION", "IMAGE")
    )


def without_dropout(model: nn.Module) -> nn.Module:
    """Train mode with every dropout, drop-path and layer-drop probability at 0 (as the fixtures)."""
    model.train()
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
        for attribute, value in list(vars(module).items()):
            if ("drop" in attribute) and isinstance(value, float):
                setattr(module, attribute, 0.0)
    # every config object: a v1 backbone holds its own copy (``to_backbone_config``), and its encoder
    # draws layer drop from the global RNG, so a missed copy makes the step depend on test order
    configs = {id(m.config): m.config for m in model.modules() if hasattr(m, "config")}
    for config in configs.values():
        for key in ("layerdrop", "prenet_layerdrop", "decoder_input_dropout", "mask_noise_std"):
            if hasattr(config, key):
                setattr(config, key, 0.0)
    return model


def fairseq_step(name: str, model: nn.Module, ref: dict):
    """Our forward on the fixture's batch and masks, the loss summed as fairseq's criterion does."""
    if name == "d2v1_audio":
        return model(ref["source"], mask_time_indices=ref["pretrain.mask"])
    if name == "d2v1_text":
        mask = ref["pretrain.mask"]
        labels = torch.where(
            mask, ref["pretrain.target_tokens"], torch.full_like(mask, -100, dtype=torch.long)
        )
        return model(ref["pretrain.src_tokens_masked"], labels=labels)
    mask_argument = {"d2v2_audio": "mask_time_indices", "d2v2_image": "bool_masked_pos"}.get(
        name, "masked_positions"
    )
    return model(ref["source"], **{mask_argument: ref["pretrain.mask"]})


@pytest.fixture(scope="module", params=MODELS)
def step(request):
    name = request.param
    checkpoint, ref, train, info = fixture(name)
    model, mapping = our_model(name, checkpoint)
    without_dropout(model)
    out = fairseq_step(name, model, ref)
    loss_sum = out.loss * out.num_masked
    loss_sum.backward()
    sample_size = int(train["sample_size"])
    grads = {n: p.grad / sample_size for n, p in model.named_parameters() if p.grad is not None}
    return name, model, mapping, out, loss_sum.detach(), grads, train, info


def test_loss_and_sample_size_match(step):
    name, _, _, out, loss_sum, _, train, _ = step
    assert int(out.num_masked) == int(train["sample_size"])
    assert loss_sum.item() == pytest.approx(train["loss_sum"].item(), rel=1e-5)


def test_every_parameter_gets_fairseqs_gradient(step):
    name, model, mapping, _, _, grads, train, info = step
    ours = dict(model.named_parameters())
    zero_by_construction = set(info["zero_by_construction"]["params"])
    compared, worst = set(), 0.0
    for key in (k for k in train if k.startswith("grad.")):
        fairseq_name = key[len("grad.") :]
        target = mapping.target_of(fairseq_name)
        assert target in ours, f"{fairseq_name} -> {target} is not a parameter of ours"
        assert target in grads, f"{target} (fairseq {fairseq_name}) has no gradient here"
        expected = train[key].reshape(grads[target].shape)
        got = grads[target]
        if fairseq_name in zero_by_construction or fairseq_name.endswith("qkv.bias"):
            # attention key biases have a zero gradient; fairseq's values there are rounding noise
            d = expected.shape[0] // 3 if fairseq_name.endswith("qkv.bias") else None
            noise = got if d is None else got[d : 2 * d]
            assert noise.abs().max() < 1e-6, fairseq_name
            if d is not None:
                got, expected = (
                    torch.cat([got[:d], got[2 * d :]]),
                    torch.cat([expected[:d], expected[2 * d :]]),
                )
            else:
                compared.add(target)
                continue
        tolerance = 1e-4 * expected.abs().max().item() + 1e-9
        difference = (got - expected).abs().max().item()
        assert difference <= tolerance, f"{target}: max diff {difference:.3g} > {tolerance:.3g}"
        worst = max(worst, difference / max(expected.abs().max().item(), 1e-12))
        compared.add(target)
    extra = sorted(set(grads) - compared)
    assert not extra, f"parameters with a gradient that fairseq does not train: {extra}"
    no_grad = set(info["no_grad_params"]["requires_grad_false"]) | set(info["no_grad_params"]["grad_none"])
    assert len(compared) + len(no_grad) == len(info["student_parameters"])
    assert worst < 1e-4


def recipe_args(name: str, **flags):
    spec, version = SPECS[name]
    argv = ["--output_dir", "unused", "--version", str(version)]
    for key, value in flags.items():
        argv += [f"--{key}", str(value)]
    args = build_parser(spec).parse_args(argv)
    apply_recipe_defaults(spec, args)
    return args


def decay_by_fairseq_name(name: str, model: nn.Module, mapping, args) -> dict[str, float]:
    optimizer = build_optimizer(model, args)
    ours = {}
    for group in optimizer.param_groups:
        for param_name in group["param_names"]:
            ours[param_name] = group["weight_decay"]
    return ours


@pytest.mark.parametrize("name", MODELS)
def test_recipe_optimizer_decays_what_fairseq_decays(name):
    checkpoint, _, _, info = fixture(name)
    model, mapping = our_model(name, checkpoint)
    args = recipe_args(name)
    ours = decay_by_fairseq_name(name, model, mapping, args)
    groups = info["param_groups"]
    assert len(ours) == len(groups), (len(ours), len(groups))
    for fairseq_name, entry in groups.items():
        target = mapping.target_of(fairseq_name)
        assert ours[target] == pytest.approx(entry["weight_decay"]), fairseq_name
        assert args.weight_decay == pytest.approx(entry["weight_decay"])
        assert (args.adam_beta1, args.adam_beta2) == tuple(entry["betas"])
        assert args.adam_epsilon == entry["eps"]


@pytest.mark.parametrize("name", ["d2v2_image", "d2v2_text"])
def test_intended_exemptions_are_an_option(name):
    """``--weight_decay_scope no_1d_bias`` exempts exactly what data2vec2.py marks with
    ``weight_decay_scale: 0`` (which fairseq's composite optimizer then ignores)."""
    checkpoint, _, _, info = fixture(name)
    model, mapping = our_model(name, checkpoint)
    ours = decay_by_fairseq_name(name, model, mapping, recipe_args(name, weight_decay_scope="no_1d_bias"))
    for fairseq_name, entry in info["param_groups"].items():
        marked = entry.get("optim_overrides_attr", {}).get("optimizer", {}).get("weight_decay_scale") == 0
        decayed = ours[mapping.target_of(fairseq_name)] > 0
        assert decayed != marked, fairseq_name
    assert not math.isclose(sum(v > 0 for v in ours.values()), len(ours))  # something is exempt
