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

:func:`use_contiguous_conv_layers` gives transformers' data2vec-audio CNN and positional convolution
layers this forward, in place (their class is swapped for a subclass that only overrides
``forward``): parameters, names, initialisation and checkpoints stay those of transformers.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.models.data2vec.modeling_data2vec_audio import (
    Data2VecAudioConvLayer,
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


class ContiguousConvLayer(Data2VecAudioConvLayer):
    """transformers' CNN layer (conv → LayerNorm → GELU) with contiguous layouts; same parameters."""

    def forward(self, hidden_states):
        return self.activation(channels_last_norm(self.conv(hidden_states), self.layer_norm))


class ContiguousPositionalConvLayer(Data2VecAudioPositionalConvLayer):
    """transformers' positional convolution layer with contiguous layouts; same parameters."""

    def forward(self, hidden_states):
        hidden_states = self.padding(self.conv(hidden_states))
        return self.activation(channels_last_norm(hidden_states, self.layer_norm))


class ContiguousPositionalConvEmbedding(Data2VecAudioPositionalConvEmbedding):
    """transformers' positional convolution (B x T x D in and out) with contiguous layouts."""

    def forward(self, hidden_states):
        hidden_states = transpose_contiguous(hidden_states)
        for layer in self.layers:
            hidden_states = layer(hidden_states)
        return transpose_contiguous(hidden_states)


_CONTIGUOUS = {
    Data2VecAudioConvLayer: ContiguousConvLayer,
    Data2VecAudioPositionalConvLayer: ContiguousPositionalConvLayer,
    Data2VecAudioPositionalConvEmbedding: ContiguousPositionalConvEmbedding,
}


def use_contiguous_conv_layers(module: nn.Module) -> nn.Module:
    """Swap, in place, transformers' data2vec-audio CNN layers, positional convolution layers and
    positional embedding under ``module`` for their contiguous-layout subclasses (exact types only:
    other modules, subclasses included, are left alone)."""
    for sub in module.modules():
        target = _CONTIGUOUS.get(type(sub))
        if target is not None:
            sub.__class__ = target
    return module
