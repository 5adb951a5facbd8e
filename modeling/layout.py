"""Memory layout of the convolution stacks: channels-first for the convolution, channels-last for the
LayerNorm, every tensor contiguous in its own layout — forward *and* backward.

The speech CNN, the convolutional positional encoders and the 2.0 decoders all run ``conv (B x C x T)
→ LayerNorm over C → GELU``. Written with ``transpose`` views (as transformers' and fairseq's layers
are), the LayerNorm reads a strided tensor and, worse, the backward pass meets saved activations in
one layout and gradients in the other: every elementwise backward (GELU, LayerNorm, residual adds)
then runs on mixed strides, 10-15x slower than on contiguous tensors on CPU (a 2 x 512 x 12799 GELU
backward: 138 ms mixed, about 10 ms contiguous), and the convolution copies its input and gradient to
its own layout. :func:`transpose_contiguous` swaps the channel axis with one copy and makes the
gradient contiguous on the way back too, so each op sees one layout. The arithmetic is unchanged;
only reduction order inside a kernel may differ (last-ulp differences).

On the CPU the speech CNN goes further and never leaves the time-major layout (B x T x C): each
strided convolution is one GEMM over its input windows (:class:`WindowConvolution`), and LayerNorm and
GELU run on its output as it comes, so the CNN has no layout copies at all. Base CNN (2 x 4 s), forward
and backward: 731-762 ms instead of 906-934 ms side by side; oneDNN's backward of the big strided
convolutions was the slow part.

:func:`use_contiguous_conv_layers` gives transformers' data2vec-audio CNN and positional convolution
layers these forwards, in place (their class is swapped for a subclass that only overrides
``forward``): parameters, names, initialisation and checkpoints stay those of transformers.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers.models.data2vec.modeling_data2vec_audio import (
    Data2VecAudioConvLayer,
    Data2VecAudioFeatureEncoder,
    Data2VecAudioPositionalConvEmbedding,
    Data2VecAudioPositionalConvLayer,
)


class _TransposeContiguous(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.transpose(1, -1).contiguous()

    @staticmethod
    def backward(ctx, grad):
        return grad.transpose(1, -1).contiguous()


def transpose_contiguous(x: torch.Tensor) -> torch.Tensor:
    """``x.transpose(1, -1).contiguous()`` whose gradient is contiguous as well (autograd's own
    backward of a transpose is a strided view, which is what makes the backward pass slow)."""
    return _TransposeContiguous.apply(x)


def channels_last_norm(x: torch.Tensor, norm) -> torch.Tensor:
    """``norm`` (over channels) of a B x C x T tensor, returned B x C x T, every step contiguous."""
    return transpose_contiguous(norm(transpose_contiguous(x)))


def conv_time_major(conv: nn.Conv1d, x: torch.Tensor) -> torch.Tensor:
    """``conv`` over the time axis of a B x T x C tensor, returned B x T' x C'. On the CPU it runs as a
    channels-last 2-D convolution of a *view* of ``x`` (B x C x 1 x T with channels-last strides, which
    oneDNN reads and writes natively): no transposes at all, and the positional encoders' grouped
    convolutions (768 channels, 16 groups, kernel 19) take 25-30 % less time forward and backward than
    channels-first. Elsewhere it transposes to channels-first and back (:func:`transpose_contiguous`)."""
    if x.device.type != "cpu":
        return transpose_contiguous(conv(transpose_contiguous(x)))
    if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
        raise ValueError("conv_time_major needs a convolution with explicit zero padding")
    planes = x.contiguous().transpose(1, 2).unsqueeze(2)
    y = F.conv2d(planes, conv.weight.unsqueeze(2), conv.bias, (1, conv.stride[0]), (0, conv.padding[0]),
                 (1, conv.dilation[0]), conv.groups)  # fmt: skip
    return y.squeeze(2).transpose(1, 2).contiguous()  # already contiguous: channels-last output


class WindowConvolution(torch.autograd.Function):
    """An unpadded 1-D convolution of a time-major B x T x C tensor, returned B x T' x C', as one GEMM
    of its input windows (B·T' x k·C, copied once) with the weight. The backward pass is two GEMMs and
    a fold of the windows' gradients back onto the input (k strided adds, or one strided copy when the
    windows do not overlap)."""

    @staticmethod
    @torch.amp.custom_fwd(device_type="cpu")  # CPU only; the backward runs under the forward's autocast
    def forward(ctx, x, weight, bias, stride: int):
        x = x.contiguous()  # the windows below are strides of a contiguous tensor (a crop is not one)
        batch, length, channels = x.shape
        out_channels, _, kernel = weight.shape
        frames = (length - kernel) // stride + 1
        windows = x.as_strided(
            (batch, frames, kernel, channels), (length * channels, stride * channels, channels, 1)
        )
        windows = windows.reshape(batch * frames, kernel * channels)
        flat_weight = weight.permute(0, 2, 1).reshape(out_channels, kernel * channels)  # [out, tap · in]
        y = windows @ flat_weight.t() if bias is None else torch.addmm(bias, windows, flat_weight.t())
        ctx.save_for_backward(windows, flat_weight)
        ctx.geometry = (batch, length, channels, frames, kernel, stride)
        return y.view(batch, frames, out_channels)

    @staticmethod
    @torch.amp.custom_bwd(device_type="cpu")
    def backward(ctx, grad):
        windows, flat_weight = ctx.saved_tensors
        batch, length, channels, frames, kernel, stride = ctx.geometry
        grad = grad.reshape(batch * frames, -1)
        grad_x = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_windows = (grad @ flat_weight).view(batch, frames, kernel, channels)
            if kernel <= stride:  # windows side by side (or gaps between): one strided copy
                span = max(length, stride * frames)  # the last window's stride may reach past the end
                grad_x = grad.new_zeros(batch, span, channels)
                grad_x[:, : stride * frames].view(batch, frames, stride, channels)[:, :, :kernel] = (
                    grad_windows
                )
                grad_x = grad_x[:, :length]
            else:
                grad_x = grad.new_zeros(batch, length, channels)
                for tap in range(kernel):
                    grad_x[:, tap : tap + stride * (frames - 1) + 1 : stride] += grad_windows[:, :, tap]
        if ctx.needs_input_grad[1]:
            grad_weight = (grad.t() @ windows).view(-1, kernel, channels).permute(0, 2, 1)
        if ctx.needs_input_grad[2]:
            grad_bias = grad.sum(0)
        return grad_x, grad_weight, grad_bias, None


def window_convolution(conv: nn.Conv1d, x: torch.Tensor) -> torch.Tensor:
    """``conv`` (unpadded, ungrouped, undilated) over the time axis of a B x T x C tensor, as
    :class:`WindowConvolution`; returned B x T' x C'."""
    return WindowConvolution.apply(x, conv.weight, conv.bias, conv.stride[0])


def _windows_apply(conv: nn.Conv1d) -> bool:
    return (
        conv.padding == (0,) and conv.dilation == (1,) and conv.groups == 1 and conv.padding_mode == "zeros"
    )


class ContiguousConvLayer(Data2VecAudioConvLayer):
    """transformers' CNN layer (conv → LayerNorm → GELU) with contiguous layouts; same parameters.
    ``time_major=True``: B x T x C in and out (see :class:`TimeMajorFeatureEncoder`)."""

    def forward(self, hidden_states, time_major: bool = False):
        if time_major:
            return self.activation(self.layer_norm(window_convolution(self.conv, hidden_states)))
        return self.activation(channels_last_norm(self.conv(hidden_states), self.layer_norm))


class TimeMajorFeatureEncoder(Data2VecAudioFeatureEncoder):
    """transformers' speech CNN; on the CPU it runs time-major throughout (window GEMMs, no layout
    copies) and returns a B x C x T *view* of its B x T x C result, so that the callers' usual
    ``.transpose(1, 2)`` gives a contiguous B x T x C. Elsewhere (GPUs: cuDNN's convolutions) it runs
    as transformers' does, with contiguous layouts."""

    def forward(self, input_values):
        layers = self.conv_layers
        if input_values.device.type != "cpu" or not all(
            isinstance(layer, ContiguousConvLayer) and _windows_apply(layer.conv) for layer in layers
        ):
            return super().forward(input_values)
        hidden_states = input_values[:, :, None]
        if self._requires_grad and self.training:  # as transformers: gradient checkpointing needs it
            hidden_states.requires_grad = True
        for layer in layers:
            hidden_states = layer(hidden_states, time_major=True)
        return hidden_states.transpose(1, 2)


class ContiguousPositionalConvLayer(Data2VecAudioPositionalConvLayer):
    """transformers' positional convolution layer with contiguous layouts; same parameters."""

    def forward(self, hidden_states):  # B x C x T, as transformers' layer
        return transpose_contiguous(self.time_major(transpose_contiguous(hidden_states)))

    def time_major(self, hidden_states):
        """The layer on B x T x C, returned B x T x C (no transposes on the CPU: conv_time_major)."""
        hidden_states = conv_time_major(self.conv, hidden_states)
        if self.padding.num_pad_remove > 0:  # "same" padding of an even kernel: drop the extra step
            hidden_states = hidden_states[:, : -self.padding.num_pad_remove]
        return self.activation(self.layer_norm(hidden_states))


class ContiguousPositionalConvEmbedding(Data2VecAudioPositionalConvEmbedding):
    """transformers' positional convolution (B x T x D in and out) with contiguous layouts."""

    def forward(self, hidden_states, keep: torch.Tensor | None = None):
        """``keep`` (B x T x 1, 1 for real steps, 0 for padding): padding is zeroed before every layer
        and in the output, so real steps never read it."""
        for layer in self.layers:
            hidden_states = layer.time_major(hidden_states if keep is None else hidden_states * keep)
        return hidden_states if keep is None else hidden_states * keep


_CONTIGUOUS = {
    Data2VecAudioFeatureEncoder: TimeMajorFeatureEncoder,
    Data2VecAudioConvLayer: ContiguousConvLayer,
    Data2VecAudioPositionalConvLayer: ContiguousPositionalConvLayer,
    Data2VecAudioPositionalConvEmbedding: ContiguousPositionalConvEmbedding,
}


def use_contiguous_conv_layers(module: nn.Module) -> nn.Module:
    """Swap, in place, transformers' data2vec-audio CNN (encoder and layers), positional convolution
    layers and positional embedding under ``module`` for their contiguous-layout subclasses (exact
    types only: other modules, subclasses included, are left alone)."""
    for sub in module.modules():
        target = _CONTIGUOUS.get(type(sub))
        if target is not None:
            sub.__class__ = target
    return module
