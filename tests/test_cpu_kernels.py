"""The CPU speed-ups change layouts and random draws, never the computation: checked against the plain
PyTorch formulation they replace (values and gradients) and against dropout's statistics."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from data2vec_hf.data2vec2 import Decoder
from data2vec_hf.dropout import Dropout, apply_dropout, attention, dropout_multiplier
from data2vec_hf.layout import (
    TimeMajorFeatureEncoder,
    transpose_contiguous,
    use_contiguous_conv_layers,
    window_convolution,
)
from transformers import Data2VecAudioConfig, Data2VecAudioModel
from transformers.models.data2vec.modeling_data2vec_audio import Data2VecAudioConvLayer


def test_transpose_contiguous_makes_values_and_gradients_contiguous():
    x = torch.randn(2, 5, 3, requires_grad=True)
    seen = {}
    y = transpose_contiguous(x)
    y.register_hook(lambda g: seen.setdefault("grad_y", g))
    assert y.is_contiguous() and torch.equal(y, x.transpose(1, 2))
    weight = torch.randn(2, 3, 5)
    (y * weight).sum().backward()
    assert x.grad.is_contiguous() and torch.equal(x.grad, weight.transpose(1, 2))


def _audio_backbones(conv_pos_kernel_size=5):
    config = Data2VecAudioConfig(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
        conv_dim=(16, 16, 16), conv_kernel=(10, 3, 3), conv_stride=(5, 2, 2),
        num_conv_pos_embeddings=3, conv_pos_kernel_size=conv_pos_kernel_size, num_conv_pos_embedding_groups=4,
        apply_spec_augment=False, layerdrop=0.0,
    )  # fmt: skip
    torch.manual_seed(0)
    plain = Data2VecAudioModel(config).train()
    fast = Data2VecAudioModel(config).train()
    fast.load_state_dict(plain.state_dict())
    use_contiguous_conv_layers(fast)
    return plain, fast


@pytest.mark.parametrize("conv_pos_kernel_size", [5, 4])  # odd; even drops the last step
def test_contiguous_audio_conv_layers_match_transformers(conv_pos_kernel_size):
    plain, fast = _audio_backbones(conv_pos_kernel_size)
    assert all(type(layer) is not Data2VecAudioConvLayer for layer in fast.feature_extractor.conv_layers)
    assert type(fast.feature_extractor) is TimeMajorFeatureEncoder  # the CPU path: window GEMMs
    assert fast.state_dict().keys() == plain.state_dict().keys()
    audio = torch.randn(2, 1600)
    outputs, grads = [], []
    for model in (plain, fast):
        model.zero_grad()
        torch.manual_seed(1)  # same dropout draws (transformers' own dropout modules)
        out = model(audio).last_hidden_state
        (out * torch.linspace(-1, 1, out.shape[-1])).sum().backward()
        outputs.append(out)
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    torch.testing.assert_close(outputs[1], outputs[0], rtol=1e-5, atol=1e-5)
    assert grads[0].keys() == grads[1].keys()
    for name, reference in grads[0].items():
        scale = reference.abs().max().clamp_min(1e-3)  # k_proj.bias: zero in theory, rounding noise here
        error = (grads[1][name] - reference).abs().max() / scale
        assert error < 1e-5, (name, error.item())


@pytest.mark.parametrize(
    "kernel, stride, length, bias",
    [(10, 5, 203, True), (3, 2, 64, False), (3, 2, 65, True), (2, 2, 33, False), (1, 3, 20, True)],
)  # overlapping windows, a tail no window reads, windows side by side, gaps between windows
@pytest.mark.parametrize("cropped", [False, True])  # a crop of a longer batch is not contiguous
def test_window_convolution_is_conv1d(kernel, stride, length, bias, cropped):
    """Values and all three gradients equal ``F.conv1d`` on the channels-first transpose."""
    torch.manual_seed(0)
    conv = torch.nn.Conv1d(6, 5, kernel, stride=stride, bias=bias).double()
    source = torch.randn(3, length + 7 * cropped, 6, dtype=torch.float64, requires_grad=True)
    results = []
    for time_major in (True, False):
        conv.zero_grad()
        source.grad = None
        x = source[:, 3 : 3 + length] if cropped else source
        if time_major:
            y = window_convolution(conv, x)
        else:
            y = F.conv1d(x.transpose(1, 2), conv.weight, conv.bias, stride).transpose(1, 2)
        (y * torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y)).sum().backward()
        results.append((y.detach(), source.grad.clone(), *(p.grad.clone() for p in conv.parameters())))
    assert results[0][0].shape == (3, (length - kernel) // stride + 1, 5)
    for ours, reference in zip(*results, strict=True):
        torch.testing.assert_close(ours, reference, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("conv_pos_kernel_size", [5, 4])
def test_positional_convolution_with_padding_matches_transposed_formulation(conv_pos_kernel_size):
    """The channels-last positional convolution with a padding mask (zeroed before every layer and in
    the output) equals the channels-first one of transformers' layers, values and gradients."""
    from data2vec_hf.data2vec2 import conv_positions

    plain, fast = _audio_backbones(conv_pos_kernel_size)
    padding = torch.zeros(2, 11, dtype=torch.bool)
    padding[1, 7:] = True
    x = torch.randn(2, 11, 32, requires_grad=True)
    results = []
    for model in (plain, fast):
        x.grad = None
        model.zero_grad()
        out = conv_positions(model.encoder.pos_conv_embed, x, padding)
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        results.append(
            (out, x.grad.clone(), [p.grad.clone() for p in model.encoder.pos_conv_embed.parameters()])
        )
    (ref, ref_grad_x, ref_grads), (out, grad_x, grads) = results
    assert out[1, 7:].abs().max() == 0  # padded steps stay zero
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad_x, ref_grad_x, rtol=1e-4, atol=1e-5)
    for grad, ref_grad in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(grad, ref_grad, rtol=1e-4, atol=1e-5)


def _reference_decoder(decoder: Decoder, x, padding_mask=None):
    """The decoder written with transposed views (the formulation of fairseq and of our first version)."""
    batch, length, dim = x.shape
    x = x.transpose(1, 2)
    if decoder.grid is not None:
        x = x.reshape(batch, dim, *decoder.grid)
    keep = None if padding_mask is None else (~padding_mask).unsqueeze(1).to(x.dtype)
    residual = x
    for conv in decoder.convs:
        x = conv(x if keep is None else x * keep)
        if decoder.kernel % 2 == 0:
            x = x[..., :-1] if x.dim() == 3 else x[..., :-1, :-1]
        x = F.gelu(F.layer_norm(x.movedim(1, -1), x.shape[1:2]).movedim(-1, 1))
        if decoder.residual and residual.shape == x.shape:
            x = x + residual
        residual = x
    return decoder.proj(x.reshape(batch, x.shape[1], length).transpose(1, 2))


@pytest.mark.parametrize(
    "kernel,groups,grid,padded",
    [(3, 1, None, False), (4, 2, None, True), (3, 4, (3, 4), False), (2, 1, (3, 4), False)],
)
def test_decoder_matches_transposed_view_formulation(kernel, groups, grid, padded):
    from data2vec_hf import Data2Vec2TextConfig

    config = Data2Vec2TextConfig(hidden_size=16, decoder_dim=8, decoder_kernel=kernel, decoder_groups=groups,
                                 decoder_layers=3, decoder_projection_layers=2)  # fmt: skip
    torch.manual_seed(0)
    decoder = Decoder(config, dims=1 if grid is None else 2, grid=grid)
    length = 12 if grid is not None else 9
    x = torch.randn(2, length, 16, requires_grad=True)
    padding = None
    if padded:
        padding = torch.zeros(2, length, dtype=torch.bool)
        padding[1, 6:] = True
    results = []
    for forward in (decoder, lambda x, p: _reference_decoder(decoder, x, p)):
        x.grad = None
        decoder.zero_grad()
        out = forward(x, padding)
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        results.append((out, x.grad.clone(), [p.grad.clone() for p in decoder.parameters()]))
    (out, grad_x, grads), (ref, ref_grad_x, ref_grads) = results
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad_x, ref_grad_x, rtol=1e-4, atol=1e-5)
    for grad, ref_grad in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(grad, ref_grad, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("p", [0.05, 0.1, 0.5])
def test_dropout_multiplier_has_the_rate_and_preserves_the_mean(p):
    torch.manual_seed(0)
    multiplier = dropout_multiplier((400, 1000), p)
    dropped = (multiplier == 0).double().mean().item()
    assert abs(dropped - p) < 4 * math.sqrt(p * (1 - p) / multiplier.numel())  # within 4 standard errors
    kept = multiplier[multiplier != 0].unique()
    assert kept.numel() == 1
    quantised = round(p * 65536) / 65536
    assert kept.item() == pytest.approx(1 / (1 - quantised), rel=1e-6)
    # independent elements: neighbouring masks are uncorrelated (the 4 masks of one 64-bit draw too)
    flat = (multiplier == 0).double().flatten()
    for lag in (1, 2, 3, 4):
        correlation = torch.corrcoef(torch.stack([flat[:-lag], flat[lag:]]))[0, 1].item()
        assert abs(correlation) < 0.01


def test_dropout_is_seeded_and_matches_nn_dropout_contract():
    x = torch.randn(64, 33, requires_grad=True)
    torch.manual_seed(3)
    a = apply_dropout(x, 0.2)
    torch.manual_seed(3)
    b = Dropout(0.2)(x)
    assert torch.equal(a, b)
    b.sum().backward()
    # the gradient is the mask times the scale: exactly what the forward applied
    torch.testing.assert_close(x.grad, torch.where(b != 0, 1 / (1 - round(0.2 * 65536) / 65536), 0.0))
    assert torch.equal(Dropout(0.2).eval()(x), x)
    assert torch.equal(apply_dropout(x, 0.0), x)
    assert torch.equal(apply_dropout(x, 1.0), torch.zeros_like(x))


def test_attention_with_dropout_is_sdpa_with_those_probabilities():
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 7, 4) for _ in range(3))
    bias = torch.zeros(2, 1, 1, 7).masked_fill(torch.arange(7) >= 5, float("-inf"))
    torch.testing.assert_close(
        attention(q, k, v, bias, 0.1, training=False), F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
    )
    torch.manual_seed(5)
    out = attention(q, k, v, bias, 0.1, training=True)
    torch.manual_seed(5)
    multiplier = dropout_multiplier((2, 3, 7, 7), 0.1)
    probs = torch.softmax(q @ k.transpose(-2, -1) / 2.0 + bias, dim=-1)
    torch.testing.assert_close(out, (probs * multiplier) @ v)


def test_attention_rows_without_keys_are_zero_and_finite():
    """A row whose every key is padding (an all-padding clone) gives zeros, as torch's kernels do, and
    no NaN in the gradients."""
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 2, 5, 4, requires_grad=True) for _ in range(3))
    bias = torch.zeros(2, 1, 1, 5)
    bias[1] = float("-inf")
    out = attention(q, k, v, bias, 0.1, training=True)
    assert torch.equal(out[1], torch.zeros_like(out[1]))
    out.sum().backward()
    assert all(torch.isfinite(t.grad).all() for t in (q, k, v))
    reference = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
    torch.testing.assert_close(attention(q, k, v, bias, 0.0, training=True), reference)


FAULTS_OF_REALLOCATION = """
import importlib.util, resource, sys, torch
spec = importlib.util.spec_from_file_location("host_memory", sys.argv[2])  # without the whole package
host_memory = importlib.util.module_from_spec(spec)
spec.loader.exec_module(host_memory)
applied = host_memory.keep_freed_host_memory() if sys.argv[1] == "keep" else None
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(40):
    torch.ones(16 * 2**20).sum()  # a 64 MiB activation, written, then freed
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_kept_host_memory_is_reused_without_page_faults():
    """By default a freed 64 MiB activation is unmapped, and every reallocation faults its 16 k pages in
    again. With freed memory kept, only the heap's growth to its high-water mark faults: small
    allocations in between split freed blocks, so glibc takes a few rounds (here 3-6) to settle."""
    from data2vec_hf.pretraining import host_memory

    def faulted_tensors(mode):
        out = subprocess.run([sys.executable, "-c", FAULTS_OF_REALLOCATION, mode, host_memory.__file__],
                             capture_output=True, text=True, check=True)  # fmt: skip
        applied, count = out.stdout.split()
        return applied, int(count) / (64 * 2**20 // 4096)  # faults per 64 MiB of pages

    applied, kept = faulted_tensors("keep")
    assert applied == "True" and kept <= 15
    assert faulted_tensors("default")[1] >= 35  # (almost) every one of the 40
