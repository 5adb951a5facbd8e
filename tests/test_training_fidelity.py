"""Training follows the released fairseq recipes step for step (issue: training fidelity).

Each test pins one behaviour that a run's learning depends on: how gradients are normalised over
micro-batches, what a clip's targets are when it is cropped or padded in a batch, which targets,
initialisation, masks, weight decay and collapse guard each recipe uses.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch
from accelerate.state import AcceleratorState, PartialState
from conftest import tiny_audio_config, tiny_text_config, tiny_vision_config
from data2vec_hf import Data2VecAudioForPreTraining, Data2VecTextForPreTraining, Data2VecVisionForPreTraining
from data2vec_hf.data2vec2_audio import (
    Data2Vec2AudioConfig,
    Data2Vec2AudioForPreTraining,
    sample_audio_masks_v2,
)
from data2vec_hf.data2vec2_vision import Data2Vec2VisionConfig, Data2Vec2VisionForPreTraining
from data2vec_hf.data2vec_audio import sample_audio_masks
from data2vec_hf.losses import feature_std, regression_loss
from data2vec_hf.pretraining import pretrain_audio, pretrain_vision
from data2vec_hf.pretraining.arguments import apply_recipe_defaults, build_parser
from data2vec_hf.pretraining.building import build_model
from data2vec_hf.pretraining.data import AudioCollator
from data2vec_hf.pretraining.data.batching import EpochBatchSampler, example_generator
from data2vec_hf.pretraining.guards import check_collapse
from data2vec_hf.pretraining.statistics import UpdateStatistics
from data2vec_hf.pretraining.trainer import PretrainingLoop

sys.path.insert(0, str(Path(__file__).parent))
from test_pretraining_scripts import TINY_AUDIO, TINY_V2, audio_folder, summary  # noqa: E402

NO_DROPOUT = ",hidden_dropout=0.0,attention_dropout=0.0,activation_dropout=0.0,layerdrop=0.0"
NO_DROPOUT_V1_AUDIO = NO_DROPOUT + ",feat_proj_dropout=0.0,require_same_masks=false"
NO_DROPOUT_V2 = (
    NO_DROPOUT + ",post_mlp_dropout=0.0,prenet_dropout=0.0,prenet_layerdrop=0.0,decoder_input_dropout=0.0"
    ",mask_noise_std=0.0"
)


def parse(spec, argv: list[str]):
    args = build_parser(spec).parse_args(argv)
    apply_recipe_defaults(spec, args)
    return args


def reset_accelerate():
    AcceleratorState._reset_state(True)
    PartialState._reset_state()


# ------------------------------------------------------------------------------------ 1. accumulation


def one_update(spec, argv: list[str], setup=None) -> tuple[dict, dict, float]:
    """Run one update in this process; return the gradients before clipping, the weights after the
    update (student and teacher) and the update's loss. ``setup(loop)``, when given, is called on the
    built loop before it trains (to install hooks that watch the real training step)."""
    loop = PretrainingLoop(spec, parse(spec, argv))
    captured = {}
    clip = loop.clip_gradients

    def capture():
        captured.update(
            {n: p.grad.clone() for n, p in loop.unwrapped.named_parameters() if p.grad is not None}
        )
        return clip()

    loop.clip_gradients = capture
    try:
        if setup is not None:
            setup(loop)
        loop.train()
    finally:
        reset_accelerate()
    weights = {n: p.detach().clone() for n, p in loop.unwrapped.state_dict().items()}
    return captured, weights, loop.last_metrics["loss"]


ACCUMULATION_CASES = {
    # padded audio of mixed lengths (exact padding), v1 and v2
    "audio-v1": (pretrain_audio.SPEC, 1, TINY_AUDIO + NO_DROPOUT_V1_AUDIO, ["--no-crop_to_shortest"]),
    "audio-v2": (pretrain_audio.SPEC, 2, TINY_V2["audio"] + NO_DROPOUT_V2, ["--no-crop_to_shortest"]),
}


@pytest.mark.parametrize("case", sorted(ACCUMULATION_CASES))
def test_accumulation_gives_the_gradients_of_one_large_batch(case, tmp_path):
    """k = 1, 2, 4 micro-batches of 8/k clips (same clips, same masks): the same gradients before clipping
    and the same weights after the update. (The loop sums the k losses and divides once by the update's masked count.)"""
    spec, version, overrides, extra = ACCUMULATION_CASES[case]
    data = audio_folder(tmp_path / "data", count=8, seconds=(0.3, 0.7))
    results = {}
    for k in (1, 2, 4):
        argv = [
            "--output_dir", str(tmp_path / f"k{k}"), "--train_dir", str(data), "--version", str(version),
            "--config_overrides", overrides, "--min_length_seconds", "0", "--max_train_steps", "1",
            "--per_device_train_batch_size", str(8 // k), "--gradient_accumulation_steps", str(k),
            "--max_grad_norm", "0.5", "--learning_rate", "1e-3", "--cache_dir", str(tmp_path / "cache"),
            *extra,
        ]  # fmt: skip
        results[k] = one_update(spec, argv)
    grads, weights, loss = results[1]
    norm = torch.cat([g.flatten() for g in grads.values()]).norm()
    for k in (2, 4):
        other_grads, other_weights, other_loss = results[k]
        assert other_grads.keys() == grads.keys()
        difference = torch.cat([(other_grads[n] - g).flatten() for n, g in grads.items()]).norm()
        assert difference / norm <= 1e-6, (k, (difference / norm).item())  # (the old loop: 1 - 1/k)
        for name, grad in grads.items():  # and tensor by tensor, up to float32 summation order
            if grad.norm() > 1e-6 * norm:  # (attention key biases have a zero gradient: only noise)
                relative = (other_grads[name] - grad).norm() / grad.norm()
                assert relative <= 1e-5, (k, name, relative.item())
        assert other_loss == pytest.approx(loss, rel=1e-6)
        for name, weight in weights.items():
            assert torch.allclose(other_weights[name], weight, atol=1e-6, rtol=0), (k, name)


# ---------------------------------------------------------------------------------- 2. crop and pad


def per_position(out, model) -> torch.Tensor:
    return regression_loss(out.prediction, out.target, model.config.loss_beta, model.config.loss_scale)


def clips(generator, short: int = 3200, long: int = 6400):
    return torch.randn(short, generator=generator), torch.randn(long, generator=generator)


# in float64, so that what is compared is the method and not the rounding of batched float32 kernels
AUDIO_MODELS = {
    1: lambda: Data2VecAudioForPreTraining(tiny_audio_config(require_same_masks=False)).double().eval(),
    2: lambda: (
        Data2Vec2AudioForPreTraining(
            Data2Vec2AudioConfig(**TINY_V2_AUDIO_CONFIG, mask_noise_std=0.0, clone_batch=2)
        )
        .double()
        .eval()
    ),
}
TINY_V2_AUDIO_CONFIG = dict(
    hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, conv_dim=(32, 32, 32),
    conv_kernel=(10, 3, 3), conv_stride=(5, 2, 2), num_conv_pos_embedding_groups=4, conv_pos_kernel_size=7,
    num_conv_pos_embeddings=2, average_top_k_layers=2, decoder_dim=16, decoder_groups=4, decoder_layers=2,
)  # fmt: skip
MASK_SAMPLERS = {1: sample_audio_masks, 2: sample_audio_masks_v2}
MASK_ARGUMENT = "mask_time_indices"


def masked_forward(model, version, batch, seeds):
    torch.manual_seed(0)
    generators = [example_generator(0, 0, s) for s in seeds]
    batch = dict(batch)
    batch.update(MASK_SAMPLERS[version](model.config, batch, generators))
    batch.pop("audio_samples")
    batch["input_values"] = batch["input_values"].double()
    with torch.no_grad():
        return model(**batch), batch[MASK_ARGUMENT]


def alone_and_paired(version: int, crop: bool, seed: int):
    """A short clip collated alone and next to a clip twice its length; the model and both batches."""
    model = AUDIO_MODELS[version]()
    short, long = clips(torch.Generator().manual_seed(seed))
    collate = AudioCollator(max_samples=None, crop_to_shortest=crop)
    generators = [example_generator(0, 0, s) for s in (0, 1)]
    alone = collate([{"input_values": short.numpy()}], generators[:1])
    pair = collate([{"input_values": short.numpy()}, {"input_values": long.numpy()}], generators)
    return model, short, long, alone, pair


@pytest.mark.parametrize("version", [1, 2])
def test_a_clip_cropped_in_a_batch_keeps_its_targets_exactly(version):
    """Crop mode (fairseq's collater): a clip batched next to a longer one is not changed at all, the
    longer one is cropped to it, so the clip's targets and per-position losses are its own."""
    model, short, long, alone_batch, pair_batch = alone_and_paired(version, crop=True, seed=1)
    assert "attention_mask" not in pair_batch and pair_batch["input_values"].shape == (2, len(short))
    assert torch.equal(pair_batch["input_values"][0], short)
    assert pair_batch["audio_samples"].tolist() == [
        [len(short), 0, 0],
        [len(long), len(long) - len(short), 0],
    ]
    alone, alone_mask = masked_forward(model, version, alone_batch, [0])
    pair, pair_mask = masked_forward(model, version, pair_batch, [0, 1])
    rows = alone_mask.shape[0]
    assert torch.equal(pair_mask[:rows], alone_mask)
    n = int(alone_mask.sum())
    # targets are built in float32 (as fairseq's): equal up to one float32 rounding
    torch.testing.assert_close(pair.target[:n], alone.target, rtol=0, atol=1e-6)
    torch.testing.assert_close(pair.prediction[:n], alone.prediction, rtol=0, atol=1e-10)
    torch.testing.assert_close(per_position(pair, model)[:n], per_position(alone, model), rtol=0, atol=1e-6)


@pytest.mark.parametrize("version", [1, 2])
def test_a_clip_padded_in_a_batch_keeps_its_targets(version):
    """Padding mode is exact: targets normalised over real steps only, positional and decoder convolutions
    never read padding, masks drawn over real frames only, padding never regressed."""
    model, short, long, alone_batch, pair_batch = alone_and_paired(version, crop=False, seed=2)
    assert pair_batch["audio_samples"].tolist() == [
        [len(short), 0, len(long) - len(short)],
        [len(long), 0, 0],
    ]
    alone, alone_mask = masked_forward(model, version, alone_batch, [0])
    pair, pair_mask = masked_forward(model, version, pair_batch, [0, 1])
    rows, frames = alone_mask.shape
    assert torch.equal(pair_mask[:rows, :frames], alone_mask)  # the clip's own mask, over its real frames
    n = int(alone_mask.sum())
    # the clip's regressed positions come first (row-major), and nothing else of its rows is regressed
    assert int(pair.num_masked) == n + int(pair_mask[rows:].sum())
    torch.testing.assert_close(pair.target[:n], alone.target, rtol=0, atol=1e-5)
    torch.testing.assert_close(pair.prediction[:n], alone.prediction, rtol=0, atol=1e-5)
    torch.testing.assert_close(per_position(pair, model)[:n], per_position(alone, model), rtol=0, atol=1e-5)


def test_length_grouped_batches_follow_fairseq():
    """Longest first with ties in random order, greedy packing under max_tokens (longest x count), batch
    order shuffled from the seed, and the batches of one update kept together."""
    lengths = [100, 300, 200, 300, 100, 250, 50, 120]
    sampler = EpochBatchSampler(lengths, max_tokens=600, seed=3, shuffle=False)
    batches = sampler.batches()
    assert sorted(i for b in batches for i in b) == list(range(8))
    for batch in batches:
        assert max(lengths[i] for i in batch) * len(batch) <= 600
    flat = [lengths[i] for b in batches for i in b]
    assert flat == sorted(lengths, reverse=True)
    shuffled = EpochBatchSampler(lengths, max_tokens=600, seed=3)
    assert sorted(map(tuple, shuffled.batches())) == sorted(map(tuple, batches))
    assert shuffled.batches() == EpochBatchSampler(lengths, max_tokens=600, seed=3).batches()
    shuffled.set_epoch(1)
    assert len(shuffled) == len(batches)
    with pytest.raises(ValueError, match="max_tokens=200 is smaller than the longest example"):
        EpochBatchSampler(lengths, max_tokens=200)
    # one update = 2 micro-batches of 2 gives the same examples as 1 batch of 4
    big = EpochBatchSampler(lengths, batch_size=4, seed=5).batches()
    small = EpochBatchSampler(lengths, batch_size=2, seed=5, batches_per_update=2).batches()
    assert [sorted(small[i] + small[i + 1]) for i in range(0, 4, 2)] == [sorted(b) for b in big]


@pytest.mark.parametrize("size", [8, 9, 10, 13])
@pytest.mark.parametrize("grouped", [True, False])
def test_processes_read_disjoint_examples_that_cover_the_epoch(size, grouped):
    """Two processes: disjoint examples, together the whole epoch, the same number of batches each; and,
    where the epoch splits into whole updates both ways, every update holds the same examples as one
    process with twice the batch (otherwise the last update is re-split and the order differs)."""
    lengths = list(range(size, 0, -1))
    common = dict(batch_size=2, seed=7, group_by_length=grouped)
    ranks = [EpochBatchSampler(lengths, num_replicas=2, rank=r, **common).batches() for r in (0, 1)]
    seen = [i for batches in ranks for batch in batches for i in batch]
    assert sorted(seen) == list(range(size))  # disjoint and complete
    assert len(ranks[0]) == len(ranks[1])
    single = EpochBatchSampler(lengths, batch_size=4, seed=7, group_by_length=grouped).batches()
    if size in (8, 10):
        for update, batch in enumerate(single):
            assert sorted(ranks[0][update] + ranks[1][update]) == sorted(batch)
    resumed = EpochBatchSampler(lengths, num_replicas=2, rank=1, **common)
    resumed.skip = 2
    assert resumed.batches() == ranks[1][2:]


def test_duration_batching_wastes_little_audio(tmp_path):
    """A length-grouped --max_tokens run over clips of 1-2 s crops away at most 10 % of the audio (reported
    in the log and the summary); random batches of the same clips would waste far more."""
    data = audio_folder(tmp_path / "data", count=96, seconds=(1.0, 2.0))
    common = [
        "--train_dir", str(data), "--config_overrides", TINY_AUDIO, "--min_length_seconds", "0",
        "--max_train_steps", "12", "--logging_steps", "4", "--cache_dir", str(tmp_path / "cache"),
    ]  # fmt: skip
    grouped = tmp_path / "grouped"
    from data2vec_hf.pretraining.trainer import run

    try:
        assert (
            run(pretrain_audio.SPEC, ["--output_dir", str(grouped), "--max_tokens", "256000", *common]) == 0
        )
    finally:
        reset_accelerate()
    audio = summary(grouped)["audio"]
    assert audio["per_epoch"], "a whole epoch was trained and reported"
    assert 0 < audio["waste_fraction"] <= 0.10 and audio["padding_samples"] == 0
    random = tmp_path / "random"
    try:
        argv = ["--output_dir", str(random), "--no-group_by_length", "--per_device_train_batch_size", "8"]
        assert run(pretrain_audio.SPEC, argv + common) == 0
    finally:
        reset_accelerate()
    assert summary(random)["audio"]["waste_fraction"] > 2 * audio["waste_fraction"]


def test_audio_recipe_batching_defaults():
    for version, max_tokens in ((1, 3_800_000), (2, 1_000_000)):
        args = parse(pretrain_audio.SPEC, ["--output_dir", "x", "--version", str(version)])
        assert args.max_tokens == max_tokens and args.crop_to_shortest and args.group_by_length
        assert (args.min_length_seconds, args.max_length_seconds) == (2.0, 20.0)  # 32000 / 320000 samples
        assert args.per_device_train_batch_size is None  # the batch is bounded by max_tokens


# ------------------------------------------------------------------------------- 3-5. data2vec 1.0 vision


@torch.no_grad()
def test_v1_vision_targets_are_block_outputs():
    """fairseq's data2vec_vision (end_of_block_targets) and the BEiT-codebase recipe (--layer_results end):
    the average of the top-K blocks' outputs, then the final layer norm."""
    model = Data2VecVisionForPreTraining(tiny_vision_config()).eval()
    generator = torch.Generator().manual_seed(0)
    pixels = torch.randn(2, 3, 32, 32, generator=generator)
    mask = model.sample_mask(2, generator)
    out = model(pixels, bool_masked_pos=mask)
    hidden = model.data2vec_vision(pixels, output_hidden_states=True).hidden_states  # teacher = student here
    top = torch.stack(hidden[-model.config.average_top_k_layers :]).mean(0)[:, 1:]
    expected = torch.nn.functional.layer_norm(top, top.shape[-1:])[mask.flatten(1)]
    torch.testing.assert_close(out.target, expected, rtol=0, atol=1e-5)
    ffn = Data2VecVisionForPreTraining(tiny_vision_config(end_of_block_targets=False)).eval()
    ffn.load_state_dict(model.state_dict())
    assert (ffn(pixels, bool_masked_pos=mask).target - out.target).abs().max() > 1e-2  # the option differs


def test_v1_vision_recipe_defaults(tmp_path):
    config = Data2VecVisionForPreTraining.config_class()
    assert config.layer_scale_init_value == 1e-4
    assert config.attention_probs_dropout_prob == 0.05 and config.drop_path_rate == 0.25
    assert config.end_of_block_targets and (config.ema_decay, config.ema_end_decay) == (0.999, 0.9998)
    # the EMA decay is annealed over the whole run: fairseq's ema_anneal_end_step = ${optimization.max_update}
    args = parse(pretrain_vision.SPEC, ["--output_dir", "x", "--max_train_steps", "1234"])
    args.config_overrides = (
        "hidden_size=32,num_hidden_layers=2,num_attention_heads=2,intermediate_size=64,average_top_k_layers=2"
    )
    model = build_model(pretrain_vision.SPEC, args)
    assert model.config.ema_anneal_end_step == 1234
    assert model.data2vec_vision.encoder.layer[0].lambda_1.detach().eq(1e-4).all()


@pytest.mark.parametrize("version, scale, jitter", [(1, 0.08, True), (2, 0.2, False)])
def test_vision_augmentation_follows_each_recipe(version, scale, jitter, tmp_path):
    """v1: RandomResizedCrop(0.08-1) + flip + ColorJitter(0.4); v2 (MaeImageDataset): crop 0.2-1 + flip."""
    from torchvision.transforms import ColorJitter

    args = parse(pretrain_vision.SPEC, ["--output_dir", "x", "--version", str(version)])
    assert args.crop_min_scale == scale
    from data2vec_hf.pretraining.data import build_image_transform

    transform = build_image_transform(
        32, crop_scale=(args.crop_min_scale, 1.0), color_jitter=args.color_jitter
    )
    crop = transform.transforms[0]
    assert tuple(crop.scale) == (scale, 1.0)
    jitters = [t for t in transform.transforms if isinstance(t, ColorJitter)]
    assert bool(jitters) == jitter
    if jitter:
        assert jitters[0].brightness == jitters[0].contrast == jitters[0].saturation == (0.6, 1.4)


# ---------------------------------------------------------------------------------- 7. initialisation


def test_v2_initialisation_follows_fairseq():
    """init_bert_params for Linear layers, MAE's xavier patch embedding, PyTorch's default init for the
    decoder and the positional convolutions, the image CLS token N(0, 1) (init_extra_token_zero: false)."""
    torch.manual_seed(0)
    config = Data2Vec2VisionConfig(
        hidden_size=256, num_hidden_layers=2, num_attention_heads=4, intermediate_size=512, image_size=32,
        patch_size=8, prenet_depth=1, average_top_k_layers=2, decoder_dim=64, decoder_layers=2, clone_batch=2,
    )  # fmt: skip
    model = Data2Vec2VisionForPreTraining(config)
    backbone = model.data2vec2_vision
    assert 0.85 < backbone.extra_tokens.std().item() < 1.15
    patch = backbone.patch_embedding.weight
    bound = math.sqrt(6 / (patch[0].numel() + patch.shape[0]))
    assert patch.abs().max() <= bound and abs(patch.std().item() - bound / math.sqrt(3)) < 0.1 * bound
    for conv in model.decoder.convs:
        fan_in = conv.weight[0].numel()
        assert conv.weight.abs().max() <= 1 / math.sqrt(fan_in) + 1e-7  # kaiming_uniform(a=√5)
        assert abs(conv.weight.std().item() - 1 / math.sqrt(3 * fan_in)) < 0.1 / math.sqrt(3 * fan_in)
        assert conv.bias.abs().max() > 0
    proj = model.decoder.proj[-1]
    assert proj.weight.abs().max() <= 1 / math.sqrt(proj.weight.shape[1]) + 1e-7 and proj.bias.abs().max() > 0
    fc1 = backbone.blocks[0].mlp.fc1
    assert abs(fc1.weight.std().item() - 0.02) < 0.002 and fc1.bias.abs().max() == 0
    audio = Data2Vec2AudioForPreTraining(Data2Vec2AudioConfig(**TINY_V2_AUDIO_CONFIG)).data2vec2_audio
    assert Data2Vec2AudioConfig().init_extra_token_zero and not config.init_extra_token_zero
    for layer in audio.relative_positions.layers:
        assert layer.conv.bias.abs().max() > 0  # PyTorch default, not zeros
    projection = audio.feature_projection[1]
    assert projection.bias.abs().max() > 0


# --------------------------------------------------------------------------------- 8. collapse guard


def test_collapse_guard_only_where_the_recipe_has_one():
    thresholds = {
        "v1 audio": Data2VecAudioForPreTraining.config_class(),
        "v1 text": Data2VecTextForPreTraining.config_class(),
        "v1 vision": Data2VecVisionForPreTraining.config_class(),
        "v2 audio": Data2Vec2AudioConfig(),
        "v2 image": Data2Vec2VisionConfig(),
    }
    from data2vec_hf.data2vec2_text import Data2Vec2TextConfig

    thresholds["v2 text"] = Data2Vec2TextConfig()
    guarded = {k for k, c in thresholds.items() if c.min_target_var or c.min_pred_var}
    assert guarded == {"v1 audio", "v2 audio", "v2 text"}
    for name, config in thresholds.items():
        if name in guarded:
            assert (config.min_target_var, config.min_pred_var, config.collapse_guard_after) == (
                0.1,
                0.01,
                5000,
            )
        else:  # a zero variance never stops a run without a guard
            check_collapse(config, 10**6, {"target_var": 0.0, "pred_var": 0.0}, Path("."))


def test_collapse_statistics_cover_the_whole_update():
    """The guard reads the std of all targets of an update (all micro-batches and processes), computed
    from summed moments as fairseq's compute_var does — not the last micro-batch's own."""
    from types import SimpleNamespace

    generator = torch.Generator().manual_seed(0)
    parts = [torch.randn(5, 4, generator=generator) * s for s in (0.1, 3.0)]
    statistics = UpdateStatistics(4, "cpu")
    for part in parts:
        out = SimpleNamespace(num_masked=torch.tensor(5), mask=None, target=part, prediction=part * 2)
        statistics.add(out, torch.tensor(1.0), True, 1, None)

    class OneProcess:
        @staticmethod
        def reduce(tensor, reduction):
            return tensor

    totals = statistics.reduce(OneProcess)
    everything = torch.cat(parts)
    assert totals["target_var"] == pytest.approx(feature_std(everything).item(), rel=1e-6)
    assert totals["pred_var"] == pytest.approx(feature_std(everything * 2).item(), rel=1e-6)
    assert totals["target_var"] != pytest.approx(feature_std(parts[-1]).item(), rel=1e-2)
    assert totals["masked"] == 10


# ------------------------------------------------------------------------------------ 9. v1 audio masks


def test_v1_audio_masks_are_trimmed_to_the_same_count():
    """base_librispeech.yaml sets require_same_masks: every row keeps a random subset of its masked frames,
    as many as the row with the fewest — ~0.42 of the frames instead of ~0.49 for 0.65 / 10."""
    config = Data2VecAudioForPreTraining.config_class(conv_dim=(32,) * 7)  # released masking: 0.65 / 10
    assert config.require_same_masks
    batch = {"input_values": torch.zeros(16, 16000 * 4)}  # 16 clips of 4 s: 199 frames each
    generators = [example_generator(0, 0, i) for i in range(16)]
    mask = sample_audio_masks(config, batch, generators)["mask_time_indices"]
    counts = mask.sum(-1)
    assert (counts == counts[0]).all()
    assert 0.36 < mask.float().mean().item() < 0.47
    config.require_same_masks = False
    free = sample_audio_masks(config, batch, [example_generator(0, 0, i) for i in range(16)])[
        "mask_time_indices"
    ]
    assert len(set(free.sum(-1).tolist())) > 1 and free.float().mean() > mask.float().mean()
    assert (mask & ~free).sum() == 0  # trimming only removes masked frames


# ------------------------------------------------------------------------------------- 10. v1 text


def test_v1_text_regresses_only_mask_token_positions():
    """fairseq's data2vec_text regresses ``src_tokens == <mask>`` only: with 80/10/10 masking, the tokens
    replaced at random or left unchanged are not regression targets (an option regresses them too)."""
    config = tiny_text_config()
    model = Data2VecTextForPreTraining(config).eval()
    ids = torch.randint(4, 39, (2, 12), generator=torch.Generator().manual_seed(0))
    labels = torch.full_like(ids, -100)
    selected = torch.zeros_like(ids, dtype=torch.bool)
    selected[:, 2:8] = True
    labels[selected] = ids[selected]
    student = ids.clone()
    student[:, 2:6] = config.mask_token_id  # 4 of the 6 selected show <mask>
    student[:, 6] = 5  # one replaced at random, one (7) left unchanged
    with torch.no_grad():
        out = model(student, labels=labels)
        assert int(out.num_masked) == 2 * 4
        assert torch.equal(out.mask, student == config.mask_token_id)
        model.config.regress_only_mask_tokens = False
        assert int(model(student, labels=labels).num_masked) == 2 * 6


def test_v1_text_has_no_extra_trainable_token_type_bias():
    model = Data2VecTextForPreTraining(tiny_text_config())
    weight = model.data2vec_text.embeddings.token_type_embeddings.weight
    assert not weight.requires_grad and weight.abs().max() == 0


def test_weight_decay_scopes():
    """'all' decays every trainable parameter (the recipes); 'matrices' only Linear/Conv weights."""
    from data2vec_hf.pretraining.optim import param_groups

    model = Data2VecTextForPreTraining(tiny_text_config())
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    decayed, kept = param_groups(model, 0.01, "all")
    assert set(decayed["param_names"]) == trainable and not kept["params"]
    decayed, kept = param_groups(model, 0.01, "matrices")
    assert all(
        n.endswith("weight") and "LayerNorm" not in n and "embeddings" not in n
        for n in decayed["param_names"]
    )
    assert set(decayed["param_names"]) | set(kept["param_names"]) == trainable
    assert not any(n.startswith("teacher.") for n in trainable)
