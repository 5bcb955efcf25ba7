"""One gated residual layer as a single autograd function, so that training keeps fewer activations.

Written with separate torch ops, autograd keeps four [B, C, N] tensors per layer for the backward: the dilated
conv's input, sigmoid(gate), tanh(filter) and their product. This function keeps the conv input and the two
activations (the product is recomputed, one multiply), or, for layers asked to recompute their gate, only the
conv input: the backward then re-runs the dilated and conditioner convolutions.

The 1x1 convolutions run as batched matrix products that write where their result goes (the conditioning into
the dilated conv's output, the residual into the next stream, the skip into the running sum of skips): fewer
[B, C, N] buffers are allocated and filled. On a CPU that costs as much as the arithmetic once a buffer is
larger than glibc keeps (32 MiB): it goes back to the system, and the next one is faulted in page by page.

The conv input is kept zero-padded by its dilation, so that on a CPU the dilated conv and its gradients are
matrix products on shifted column slices of it (`taps_as_matmuls`), with no im2col copy; elsewhere they are
torch's convolution and `convolution_backward`. The gate's gradients are torch's `sigmoid_backward` and
`tanh_backward`.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

RESIDUAL_SCALE = 1 / math.sqrt(2.0)
aten = torch.ops.aten


def _pointwise(weight: Tensor, batch: int) -> Tensor:
    """A 1x1 conv's weight [O, I, 1] as a batch of matrices [B, O, I] (a view)."""
    return weight.squeeze(-1).expand(batch, -1, -1)


def _zero_margins(like: Tensor, channels: int, length: int, dilation: int) -> tuple[Tensor, Tensor]:
    """An uninitialised [B, channels, length] tensor inside `dilation` zero columns on each side: (the padded
    tensor, its middle)."""
    padded = like.new_empty(like.shape[0], channels, length + 2 * dilation)
    padded[..., :dilation].zero_()
    padded[..., length + dilation:].zero_()
    return padded, padded[..., dilation:length + dilation]


def padded_input(x: Tensor, step: Tensor, outside: Tensor | None, dilation: int) -> Tensor:
    """x + step, zeroed where `outside`, between `dilation` zero columns on each side: [B, C, N + 2d]. The
    dilated conv's three taps are then column slices of this one tensor, and its output is N long unpadded."""
    padded, y = _zero_margins(x, x.shape[1], x.shape[2], dilation)
    torch.add(x, step.unsqueeze(-1), out=y)
    if outside is not None:
        y.masked_fill_(outside, 0.0)
    return padded


def _taps(padded: Tensor, dilation: int) -> list[Tensor]:
    """The dilated conv's inputs tap by tap: tap k of output n reads input n + (k - 1) d."""
    length = padded.shape[-1] - 2 * dilation
    return [padded[..., k * dilation:k * dilation + length] for k in range(3)]


def taps_as_matmuls(padded: Tensor) -> bool:
    """On a CPU the dilated conv runs as three matrix products on column slices of its padded input, which the
    BLAS runs nearer its peak than oneDNN runs the convolution at these shapes (README, Measured speed;
    `benchmarks/train_speed.py --dilated-conv` times both). On a GPU cuDNN's convolution runs. Fixed per device,
    not timed per run, so that every process of a run, and a resumed run, computes the same."""
    return padded.device.type == "cpu"


def _activated_gate(padded: Tensor, conditioning: Tensor | None, dilated_weight: Tensor, dilated_bias: Tensor,
                    conditioner_weight: Tensor | None, conditioner_bias: Tensor | None, dilation: int) -> Tensor:
    """[sigmoid(gate); tanh(filter)] of dilated_conv(y) + conditioning, as one [B, 2C, N] tensor, y being the
    middle of `padded`. In bf16 (autocast) each tap's product is rounded as it is added, where a convolution
    rounds once: the autocast test bounds the difference."""
    projects = conditioning is not None and conditioner_weight is not None
    bias = (dilated_bias + conditioner_bias if projects else dilated_bias).unsqueeze(-1)
    if not taps_as_matmuls(padded):
        z = F.conv1d(padded, dilated_weight, bias.squeeze(-1), dilation=dilation)
        if projects:
            z.baddbmm_(_pointwise(conditioner_weight, z.shape[0]), conditioning)
        elif conditioning is not None:
            z += conditioning
    else:
        batch = padded.shape[0]
        taps = _taps(padded, dilation)
        weights = dilated_weight.permute(2, 0, 1).contiguous()  # [3, 2C, C]: tap k's matrix is weights[k]
        products = [(weight.expand(batch, -1, -1), tap) for weight, tap in zip(weights, taps, strict=True)]
        if projects:
            z = torch.baddbmm(bias, _pointwise(conditioner_weight, batch), conditioning)
        elif conditioning is not None:
            z = torch.add(conditioning, bias)
        else:
            z = torch.baddbmm(bias, *products.pop(0))
        for weight, tap in products:
            z.baddbmm_(weight, tap)
    gate, filter_ = z.chunk(2, dim=1)
    gate.sigmoid_()
    filter_.tanh_()
    return z


def _weight_grad(grad: Tensor, input_: Tensor) -> Tensor:
    """A 1x1 conv's weight gradient [O, I, 1] from its output gradient [B, O, N] and its input [B, I, N]."""
    return torch.bmm(grad, input_.transpose(1, 2)).sum(dim=0).unsqueeze(-1)


def _dilated_conv_backward(grad_padded: Tensor, padded: Tensor, weight: Tensor, dilation: int,
                           need_input: bool) -> tuple[Tensor | None, Tensor, Tensor]:
    """(input, weight, bias) gradients of the dilated conv of `padded`, from its output gradient held in the
    middle of `grad_padded` [B, 2C, N + 2d] between zero columns; the input gradient is y's, [B, C, N]."""
    length = padded.shape[-1] - 2 * dilation
    grad = grad_padded[..., dilation:dilation + length]
    if not taps_as_matmuls(padded):
        grad_input, grad_weight, grad_bias = aten.convolution_backward(
            grad, padded, weight, [weight.shape[0]], [1], [0], [dilation], False, [0], 1, [need_input, True, True])
        return (None if grad_input is None else grad_input[..., dilation:dilation + length]), grad_weight, grad_bias
    batch = padded.shape[0]
    grad_weight = torch.stack([_weight_grad(grad, tap)[..., 0] for tap in _taps(padded, dilation)], dim=-1)
    grad_input = None
    if need_input:  # y_n reaches output n - (k - 1) d through tap k: tap 2 - k of the padded output gradient
        transposed = weight.permute(2, 1, 0).contiguous()  # [3, C, 2C]
        shifted = _taps(grad_padded, dilation)
        grad_input = torch.bmm(transposed[0].expand(batch, -1, -1), shifted[2])
        for k in (1, 2):
            grad_input.baddbmm_(transposed[k].expand(batch, -1, -1), shifted[2 - k])
    return grad_input, grad_weight, grad.sum(dim=(0, 2))


class GatedLayer(torch.autograd.Function):
    """(x, skip_sum, step, conditioning) -> ((x + residual) / sqrt 2, skip_sum + skip) of one DiffWave layer.

    `skip_sum` (None in the first layer) receives the skip in place. `conditioning` is the upsampled mel
    [B, n_mels, N] when `conditioner_weight` is given (the layer projects it: training), the layer's projected
    conditioning [B, 2C, N] when it is None, or None (unconditional). `outside` (bool [B, 1, N], True on
    padding) zeroes the conv input there. `keep_gate=False` keeps only the conv input and recomputes the gate in
    the backward.
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, skip_sum: Tensor | None, step: Tensor, conditioning: Tensor | None,
                outside: Tensor | None, dilated_weight: Tensor, dilated_bias: Tensor,
                conditioner_weight: Tensor | None, conditioner_bias: Tensor | None, output_weight: Tensor,
                output_bias: Tensor, dilation: int, keep_gate: bool) -> tuple[Tensor, Tensor]:
        padded = padded_input(x, step, outside, dilation)
        activated = _activated_gate(padded, conditioning, dilated_weight, dilated_bias, conditioner_weight,
                                    conditioner_bias, dilation)
        sigmoid, tanh = activated.chunk(2, dim=1)
        product = sigmoid * tanh
        residual_weight, skip_weight = _pointwise(output_weight, x.shape[0]).split(x.shape[1], dim=1)
        residual_bias, skip_bias = output_bias.unsqueeze(-1).split(x.shape[1])
        h = torch.baddbmm(x, residual_weight, product, beta=RESIDUAL_SCALE, alpha=RESIDUAL_SCALE)
        h.add_(residual_bias, alpha=RESIDUAL_SCALE)
        if skip_sum is None:
            skip_sum = torch.baddbmm(skip_bias, skip_weight, product)
        else:
            skip_sum.baddbmm_(skip_weight, product).add_(skip_bias)
            ctx.mark_dirty(skip_sum)
        ctx.dilation = dilation
        ctx.set_materialize_grads(False)  # the last layer's residual output is unused: no zero gradient for it
        ctx.save_for_backward(padded, activated if keep_gate else None, conditioning, outside, dilated_weight,
                              dilated_bias, conditioner_weight, conditioner_bias, output_weight)
        return h, skip_sum

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_h: Tensor | None, grad_skip: Tensor | None) -> tuple[Tensor | None, ...]:
        (padded, activated, conditioning, outside, dilated_weight, dilated_bias, conditioner_weight, conditioner_bias,
         output_weight) = ctx.saved_tensors
        need = ctx.needs_input_grad
        dilation, (batch, channels, padded_length) = ctx.dilation, padded.shape
        length = padded_length - 2 * dilation
        grad_skip = padded.new_zeros(batch, channels, length) if grad_skip is None else grad_skip
        if activated is None:
            activated = _activated_gate(padded, conditioning, dilated_weight, dilated_bias, conditioner_weight,
                                        conditioner_bias, dilation)
        sigmoid, tanh = activated.chunk(2, dim=1)
        product = sigmoid * tanh
        residual_weight, skip_weight = _pointwise(output_weight, batch).split(channels, dim=1)
        if grad_h is None:
            grad_residual_weight, grad_residual_bias = output_weight.new_zeros(channels, channels, 1), None
        else:
            grad_residual_weight = _weight_grad(grad_h, product).mul_(RESIDUAL_SCALE)
            grad_residual_bias = grad_h.sum(dim=(0, 2)).mul_(RESIDUAL_SCALE)
        grad_output_weight = torch.cat([grad_residual_weight, _weight_grad(grad_skip, product)])
        grad_skip_bias = grad_skip.sum(dim=(0, 2))
        grad_output_bias = torch.cat([grad_skip_bias.new_zeros(channels) if grad_h is None else grad_residual_bias,
                                      grad_skip_bias])
        del product
        grad_product = torch.bmm(skip_weight.transpose(1, 2), grad_skip)
        if grad_h is not None:
            grad_product.baddbmm_(residual_weight.transpose(1, 2), grad_h, alpha=RESIDUAL_SCALE)
        grad_padded, grad_z = _zero_margins(activated, 2 * channels, length, dilation)  # see _dilated_conv_backward
        grad_gate, grad_filter = grad_z.chunk(2, dim=1)
        aten.sigmoid_backward.grad_input(torch.mul(grad_product, tanh, out=grad_gate), sigmoid, grad_input=grad_gate)
        aten.tanh_backward.grad_input(torch.mul(grad_product, sigmoid, out=grad_filter), tanh,
                                      grad_input=grad_filter)
        del grad_product, activated, sigmoid, tanh
        grad_y, grad_dilated_weight, grad_dilated_bias = _dilated_conv_backward(
            grad_padded, padded, dilated_weight, dilation, need[0] or need[2])
        grad_conditioning = grad_conditioner_weight = grad_conditioner_bias = None
        if conditioning is not None and conditioner_weight is None:
            grad_conditioning = grad_z if need[3] else None
        elif conditioning is not None:
            if need[3]:
                # The weight transposed into its own memory: with a transposed view of it, and the output gradient a
                # slice of its padded buffer, the CPU's batched product took a slower path.
                transposed = conditioner_weight[:, :, 0].t().contiguous().expand(batch, -1, -1)
                grad_conditioning = torch.bmm(transposed, grad_z)
            grad_conditioner_weight = _weight_grad(grad_z, conditioning) if need[7] else None
            grad_conditioner_bias = grad_dilated_bias.clone() if need[8] else None  # both add once per position
        grad_step = None
        if grad_y is not None:
            if outside is not None:
                grad_y.masked_fill_(outside, 0.0)
            grad_step = grad_y.sum(dim=2) if need[2] else None
            if grad_h is not None:
                grad_y.add_(grad_h, alpha=RESIDUAL_SCALE)
        return (grad_y if need[0] else None, grad_skip if need[1] else None, grad_step, grad_conditioning, None,
                grad_dilated_weight if need[5] else None, grad_dilated_bias if need[6] else None,
                grad_conditioner_weight, grad_conditioner_bias, grad_output_weight if need[9] else None,
                grad_output_bias if need[10] else None, None, None)


def gated_layer(x: Tensor, skip_sum: Tensor | None, step: Tensor, conditioning: Tensor | None, outside: Tensor | None,
                dilated_conv: nn.Conv1d, conditioner_projection: nn.Conv1d | None, output_projection: nn.Conv1d,
                keep_gate: bool = True) -> tuple[Tensor, Tensor]:
    """GatedLayer with the weights of a layer's modules (see GatedLayer for the arguments).

    Autocast does not reach into an autograd function's backward, so under autocast the function runs in the
    autocast dtype throughout, its inputs and weights cast here as autocast would cast the convolutions'.
    """
    projection = (None, None) if conditioner_projection is None else (conditioner_projection.weight,
                                                                       conditioner_projection.bias)
    tensors = (x, skip_sum, step, conditioning, dilated_conv.weight, dilated_conv.bias, *projection,
               output_projection.weight, output_projection.bias)
    device = x.device.type
    autocast = torch.is_autocast_enabled(device)
    if autocast:
        dtype = torch.get_autocast_dtype(device)
        tensors = tuple(None if t is None else t.to(dtype) for t in tensors)
    x, skip_sum, step, conditioning, *weights = tensors
    with torch.autocast(device, enabled=False) if autocast else contextlib.nullcontext():
        return GatedLayer.apply(x, skip_sum, step, conditioning, outside, *weights, dilated_conv.dilation[0],
                                keep_gate)
