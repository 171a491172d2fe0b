# Copyright 2026 The SegRet Authors. Licensed under the Apache License, Version 2.0.
"""PyTorch SegRet: an RMT (Vision RetNet) backbone with SegRet's lightweight residual decoder.

Papers: "SegRet: An Efficient Design for Semantic Segmentation with Retentive Network" and "RMT: Retentive Networks
Meet Vision Transformers" (https://arxiv.org/abs/2309.11523). Inside the backbone's stages tensors are channels-last,
(batch, height, width, channels); feature maps leave the backbone channels-first, (batch, channels, height, width).
"""

import difflib
import glob
import inspect
import json
import math
import os
from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from huggingface_hub import try_to_load_from_cache
from safetensors import safe_open
from torch import nn
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BackboneOutput, BaseModelOutput, SemanticSegmenterOutput
from transformers.modeling_utils import PreTrainedModel
from transformers.utils.generic import can_return_tuple

from .compat_segret import BackboneMixin, allow_in_image_segmentation_pipeline, init
from .configuration_segret import SegRetConfig


class SegRetDropPath(nn.Module):
    """Stochastic depth: drops the whole residual branch of a sample with probability `drop_prob` in training."""

    def __init__(self, drop_prob: float) -> None:
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return hidden_states
        keep_prob = 1.0 - self.drop_prob
        mask_shape = (hidden_states.shape[0],) + (1,) * (hidden_states.ndim - 1)
        keep_mask = hidden_states.new_empty(mask_shape).bernoulli_(keep_prob)
        return hidden_states * keep_mask.div_(keep_prob)  # one pass over the activations, not two

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}"


def depthwise_conv_channels_last(hidden_states: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Depth-wise convolution ("same" padding) of a (B, H, W, C) tensor by a (C, 1, k, k) kernel, into (B, H, W, C)."""
    # (B, H, W, C) -> (B, C, H, W) is a view with channels-last strides, which the convolution keeps.
    output = F.conv2d(
        hidden_states.permute(0, 3, 1, 2), weight, bias, padding=weight.shape[-1] // 2, groups=weight.shape[0]
    )
    return output.permute(0, 2, 3, 1)


def _depthwise_conv_nhwc(hidden_states: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """`depthwise_conv_channels_last` of a contiguous tensor into a contiguous one (the operator's fixed strides)."""
    return depthwise_conv_channels_last(hidden_states, weight, bias).contiguous()


def _depthwise_conv_nhwc_backward(
    grad_output: torch.Tensor, hidden_states: torch.Tensor, weight: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of `_depthwise_conv_nhwc` with respect to its input, weight and bias (ATen's kernel, as in eager)."""
    padding = weight.shape[-1] // 2
    grad_input, grad_weight, grad_bias = torch.ops.aten.convolution_backward(
        grad_output.permute(0, 3, 1, 2),
        hidden_states.permute(0, 3, 1, 2),
        weight,
        [weight.shape[0]],
        [1, 1],
        [padding, padding],
        [1, 1],
        False,
        [0, 0],
        weight.shape[0],
        [True, True, True],
    )
    return grad_input.permute(0, 2, 3, 1).contiguous(), grad_weight.contiguous(), grad_bias


def _register_depthwise_conv_ops() -> None:
    """Register `torch.ops.segret.depthwise_conv_nhwc` (and its backward) unless another copy of this file did.

    These operators are opaque to torch.compile: a compiled CPU training step calls ATen's depth-wise kernels on the
    channels-last tensors, as eager does. Inductor's own lowering of `convolution_backward` (torch 2.13) requires the
    activations to take the stride order of the weight's gradient, which a depth-wise kernel (C, 1, k, k) leaves
    ambiguous: it copied each saved input and gradient into (B, H, C, W) and (B, C, H, W) layouts and ran the kernel on
    mixed layouts (a 3×3 depth-wise convolution's forward and backward, 192 channels, 128², batch 2: 88 ms compiled,
    23 ms eager; BENCHMARKS.md). The model calls them only in compiled training on CPU, never in exports."""
    if hasattr(torch.ops.segret, "depthwise_conv_nhwc"):  # the package and a Hub copy of it in one process
        return
    forward = torch.library.custom_op("segret::depthwise_conv_nhwc", mutates_args=())(_depthwise_conv_nhwc)
    backward = torch.library.custom_op("segret::depthwise_conv_nhwc_backward", mutates_args=())(
        _depthwise_conv_nhwc_backward
    )
    forward.register_fake(lambda hidden_states, weight, bias: torch.empty_like(hidden_states))
    backward.register_fake(
        lambda grad_output, hidden_states, weight: (
            torch.empty_like(hidden_states),
            torch.empty_like(weight),
            weight.new_empty(weight.shape[0]),
        )
    )

    def save_inputs(ctx, inputs, output) -> None:
        hidden_states, weight, _ = inputs
        ctx.save_for_backward(hidden_states, weight)

    def gradients(ctx, grad_output):
        hidden_states, weight = ctx.saved_tensors
        return torch.ops.segret.depthwise_conv_nhwc_backward(grad_output.contiguous(), hidden_states, weight)

    forward.register_autograd(gradients, setup_context=save_inputs)


_register_depthwise_conv_ops()


class SegRetDepthwiseConv(nn.Conv2d):
    """Depth-wise k×k convolution (with bias, "same" padding) applied to a channels-last tensor.

    With `residual=True` it returns `x + conv(x)` as a single convolution: the identity is itself a depth-wise
    convolution (a 1 at the centre tap), so it is added to the kernel, which saves a pass over the activations. The
    identity kernel is computed from constants (no in-place write into the weight, which would export as a scatter), so
    exporters fold `weight + identity` into one constant kernel and quantisers see a plain convolution weight.
    """

    def __init__(self, channels: int, kernel_size: int, residual: bool = False) -> None:
        super().__init__(channels, channels, kernel_size, padding=kernel_size // 2, groups=channels)
        self.residual = residual

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        weight = self.weight
        if self.residual:
            kernel_size = self.kernel_size[0]
            taps = torch.arange(kernel_size * kernel_size, device=weight.device)
            centre_tap = (taps == taps.numel() // 2).to(weight.dtype).view(1, 1, kernel_size, kernel_size)
            weight = weight + centre_tap
        compiling = torch.compiler.is_compiling() and not torch.compiler.is_exporting()
        if compiling and torch.is_grad_enabled() and hidden_states.device.type == "cpu":
            return self.compiled_cpu_training_forward(hidden_states, weight)
        return depthwise_conv_channels_last(hidden_states, weight, self.bias)

    def compiled_cpu_training_forward(self, hidden_states: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """The same convolution through `torch.ops.segret.depthwise_conv_nhwc`, which inductor leaves to ATen (see
        `_register_depthwise_conv_ops`). Under autocast the inputs are cast as autocast casts a convolution's."""
        dtype = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else hidden_states.dtype
        return torch.ops.segret.depthwise_conv_nhwc(
            hidden_states.to(dtype).contiguous(), weight.to(dtype), self.bias.to(dtype)
        )


class SegRetConvNormLayer(nn.Module):
    """Conv3×3 (with bias) + BatchNorm, optionally followed by GELU; channels-first in and out."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, activation: bool) -> None:
        super().__init__()
        self.convolution = nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1)
        self.normalization = nn.BatchNorm2d(out_channels)
        self.activation = nn.GELU() if activation else nn.Identity()

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.activation(self.normalization(self.convolution(hidden_states)))


class SegRetEmbeddings(nn.Module):
    """Convolutional stem of stride 4: four Conv3×3+BN layers (strides 2, 1, 2, 1), GELU between them."""

    def __init__(self, config: SegRetConfig) -> None:
        super().__init__()
        hidden_size = config.embed_dims[0]
        channels = [config.num_channels, hidden_size // 2, hidden_size // 2, hidden_size, hidden_size]
        strides = [2, 1, 2, 1]
        self.layers = nn.ModuleList(
            SegRetConvNormLayer(channels[index], channels[index + 1], strides[index], activation=index < 3)
            for index in range(4)
        )

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        # Channels-last convolutions are faster on CPU and make the (B, H/4, W/4, C) output below contiguous, which
        # the stage's linear layers need to avoid copying their inputs.
        hidden_states = pixel_values.contiguous(memory_format=torch.channels_last)
        for layer in self.layers:
            hidden_states = layer(hidden_states)
        return hidden_states.permute(0, 2, 3, 1)  # (B, C, H/4, W/4) -> (B, H/4, W/4, C)


def is_traced() -> bool:
    """Whether the model is being captured as a graph: `torch.compile`, `torch.export` (and the ONNX exporter built on
    it), or TorchScript tracing (`torch.jit.trace` and the legacy `torch.onnx.export(..., dynamo=False)`)."""
    return torch.compiler.is_compiling() or torch.compiler.is_exporting() or torch.jit.is_tracing()


def outer_product(column: torch.Tensor, row: torch.Tensor) -> torch.Tensor:
    """`column[:, None] * row[None, :]`, (M,) x (K,) -> (M, K), written as a matrix product for the decay masks.

    A graph compiler stores a matrix product's result once, whereas it recomputes an element-wise product of position
    tables inside every kernel that reads it (inductor did so once per retention block, with scalar pow and log).
    With one term per element the product is exact, except that autocast and TF32 round a float32 product's inputs;
    float64 inputs are touched by neither."""
    return column[:, None] @ row[None, :]


def apply_rotary_position(
    hidden_states: torch.Tensor, rotation: torch.Tensor | tuple[torch.Tensor, torch.Tensor]
) -> torch.Tensor:
    """RMT's rotation `x * cos + rot(x) * sin`, rot mapping each channel pair (x_2i, x_2i+1) to (-x_2i+1, x_2i).

    Both channels of a pair share one angle. In eager mode `rotation` holds (cos, sin) of each pair's angle in its
    last dimension and the rotation is the complex product (x_2i + i x_2i+1) * exp(i angle): one kernel instead of
    five (two in the backward pass instead of seven). Graph compilers and exporters (inductor, ONNX) have no complex
    operators, so there `rotation` is the pair `(cos, cos)`, `(-sin, sin)` per channel pair and the product is
    `pairs * cos + swapped_pairs * signed_sin`: four element-wise passes that the compilers fuse. In an ONNX export
    the pair swap is a product with a constant 0/1 matrix (exact: one non-zero term per element) instead of a
    reversed slice: onnxruntime runs a step -1 `Slice` of an innermost dimension of size 2 element by element, 5-7×
    slower than the `MatMul` (BENCHMARKS.md). Both forms are in float32 (float64 for float64 models); half-precision
    inputs are rotated in float32 and rounded back. They differ by float rounding only.
    """
    if isinstance(rotation, tuple) and torch.onnx.is_in_onnx_export():
        cos, signed_sin = (table.flatten(-2) for table in rotation)
        states = hidden_states.to(cos.dtype)
        head_dim = states.shape[-1]
        channel = torch.arange(head_dim, device=states.device)
        pair_swap = (channel[:, None] == channel[None, :] + 1 - 2 * (channel[None, :] % 2)).to(cos.dtype)
        return (states * cos + (states @ pair_swap) * signed_sin).to(hidden_states.dtype)
    if isinstance(rotation, tuple):
        cos, signed_sin = rotation
        pairs = hidden_states.to(cos.dtype).unflatten(-1, (-1, 2))
        rotated = pairs * cos + pairs.flip(-1) * signed_sin
    else:
        pairs = hidden_states.to(rotation.dtype).unflatten(-1, (-1, 2))
        rotated = torch.view_as_real(torch.view_as_complex(pairs) * torch.view_as_complex(rotation))
    return rotated.flatten(-2).to(hidden_states.dtype)


class SegRetPositionTables(NamedTuple):
    """Everything the retention blocks of one stage need about token positions, for one input shape.

    `rotation` is the complex-product table (H, W, 1, head_dim / 2, 2) of (cos, sin) in eager mode, and the pair of
    real-arithmetic tables `(cos, signed_sin)`, each (H, W, 1, head_dim / 2, 2), in a traced graph
    (`apply_rotary_position`).

    `decay_masks` are additive attention masks, each 4-D so that `scaled_dot_product_attention` takes its fused
    kernels (a 3-D mask sends the CPU to the unfused path):
    - "decomposed": the masks along columns (1, N, H, H) and along rows (1, N, W, W);
    - "global", `dense_global_mask=False` (eager SDPA without gradients, or with gradients on wide maps): one mask
      (H, B*N, W, H*W): the queries of one image row (rows in reverse order) against all keys in raster order. It is
      a strided view into a table of size B*N*W*(2H-1)*W, so the quadratic (N, H*W, H*W) mask is never materialised
      (see `SegRetRelativePosition`);
    - "global", `dense_global_mask=True` (traced graphs, explicit attention weights, and eager calls with gradients
      where it is the smaller, `SegRetStage.dense_mask_is_cheaper`): the plain (1, N, H*W, H*W) mask, the attention
      layout that ONNX's `Attention` operator and graph compilers take as it is.
    """

    rotation: torch.Tensor | tuple[torch.Tensor, torch.Tensor]
    decay_masks: tuple[torch.Tensor, ...]
    dense_global_mask: bool


class SegRetRelativePosition(nn.Module):
    """Rotary angles and Manhattan-distance decay masks of one stage, derived from the config alone.

    Head n decays with gamma_n = 1 - 2 ** (-init_value - head_range * n / num_heads); the mask adds
    distance * log(gamma_n) to the retention scores. Token (r, c) is rotated by angle (r * width + c) * theta: RMT
    rotates by the raster index, not by a 2-D position. The base tables are computed in float32 as the official
    code (and its checkpoints) did; products are formed in float64 for float64 models and in float32 otherwise,
    then cast to the compute dtype, so bfloat16 models do not lose the angles' precision.

    The tables are computed at every stage call (once for all the stage's blocks) from the input's shape alone,
    with no size-dependent branch or cache, so `torch.export` and `torch.compile` see one graph for every input
    size. They are linear in the number of tokens: H*W angles per channel pair, and for the global mode a table of
    B*N*W*(2H-1)*W decay values (2 MB for SegRet-Tiny's stage 3 at 512², 66 MB per image at 1024×2048). The dense
    global mask that traced graphs, explicit attention weights and training (where it is the smaller) take is
    quadratic: N*(H*W)^2 values (32 MiB for Tiny's stage 3 at 512², 2 GiB at 1024×2048).
    """

    def __init__(self, head_dim: int, num_heads: int, init_value: float, head_range: float, mode: str) -> None:
        super().__init__()
        self.head_dim = head_dim
        self.num_heads = num_heads
        self.init_value = init_value
        self.head_range = head_range
        self.mode = mode

    def base_tables(self, device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The official `angle` (head_dim,) and `decay` (num_heads,) tables, in float32.

        The official code evaluates them with float32 `pow` and `log`, whose vectorised kernels differ by one unit in
        the last place between CPU instruction sets (AVX2 vs AVX-512). Each transcendental step is therefore taken in
        float64 and rounded to float32, which gives the correctly rounded value on every machine, equal to the
        tables stored in the official checkpoints; the arithmetic between the steps stays in float32 as theirs.
        """
        exponent = torch.linspace(0, 1, self.head_dim // 2, device=device)
        theta = 1.0 / (10000 ** exponent.double()).float()
        angle = theta.unsqueeze(-1).repeat(1, 2).flatten()  # (theta_0, theta_0, theta_1, theta_1, ...)
        head_index = torch.arange(self.num_heads, dtype=torch.float32, device=device)
        decay_exponent = -self.init_value - self.head_range * head_index / self.num_heads
        decay = torch.log((1 - (2 ** decay_exponent.double()).float()).double()).float()
        return angle, decay

    def forward(
        self,
        batch_size: int,
        height: int,
        width: int,
        dtype: torch.dtype,
        device: torch.device,
        dense_global_mask: bool = False,
        real_rotation: bool = False,
    ) -> SegRetPositionTables:
        table_dtype = torch.float64 if dtype == torch.float64 else torch.float32
        angle, decay = (table.to(table_dtype) for table in self.base_tables(device))

        raster_index = torch.arange(height * width, dtype=table_dtype, device=device)
        phase = raster_index[:, None] * angle[None, 0::2]  # (H*W, head_dim / 2): both channels of a pair share an angle
        pair_shape = (height, width, 1, self.head_dim // 2, 2)
        if real_rotation:
            # (cos, cos) and (-sin, sin) per channel pair, spread from (cos | sin) by one matrix product (exact: one
            # non-zero term per element), so that a graph compiler stores the tables once instead of evaluating cos
            # and sin again inside every kernel that reads them. In float64, which neither autocast nor TF32 touch:
            # the angles of distant tokens need every bit.
            spread = self._pair_spread_matrix(torch.float64, device)  # (head_dim, 2 * head_dim)
            tables = (torch.cat((phase.cos(), phase.sin()), dim=1).double() @ spread).to(table_dtype)
            rotation = (tables[:, : self.head_dim].reshape(pair_shape), tables[:, self.head_dim :].reshape(pair_shape))
        else:
            rotation = torch.stack((phase.cos(), phase.sin()), dim=-1).reshape(pair_shape)

        if self.mode == "decomposed":
            # Small tables (N * L^2 values): formed in float64, exact under autocast and TF32 as well.
            decay_masks = tuple(
                outer_product(decay.double(), self._distance_1d(length, torch.float64, device).flatten())
                .to(dtype)
                .view(1, self.num_heads, length, length)
                for length in (height, width)
            )  # (1, N, H, H) and (1, N, W, W)
        elif dense_global_mask:
            # Manhattan distance between raster positions p = (r, c) and q = (r', c'): |r - r'| + |c - c'|.
            row_distance = self._distance_1d(height, table_dtype, device)[:, None, :, None]
            column_distance = self._distance_1d(width, table_dtype, device)[None, :, None, :]
            distance = (row_distance + column_distance).flatten()
            tokens = height * width
            # Quadratic in the tokens, so formed in the tables' precision: a float64 product would double its memory,
            # and its per-block cast costs a compiled call more than it saves. Under autocast or TF32 its inputs are
            # rounded to the precision the attention then reads the mask in anyway.
            decay_masks = (outer_product(decay, distance).to(dtype).view(1, self.num_heads, tokens, tokens),)
        else:
            decay = decay[:, None, None]
            # Between query (r, c) and key (r', c') the mask only depends on |r - r'| and (c, c'): table[.., c, j, c']
            # holds it for |r - r'| = |j - (H - 1)|. Query row r = H - 1 - s needs j = s + r' (r' = 0 ... H-1): the
            # window of H rows of j starting at s. One strided view holds all H windows, and in it the keys (r', c')
            # form one raster-order dimension (stride 1). The table is repeated per image, since the attention's
            # batch entries (rows) and heads (images x heads) must each be one strided dimension.
            row_offset = (torch.arange(2 * height - 1, dtype=table_dtype, device=device) - (height - 1)).abs()
            column_distance = self._distance_1d(width, table_dtype, device)
            distance = column_distance[:, None, :] + row_offset[None, :, None]  # (W, 2H-1, W)
            table = (distance * decay[..., None]).to(dtype)  # (N, W, 2H-1, W)
            table = table.expand(batch_size, -1, -1, -1, -1).contiguous()  # (B, N, W, 2H-1, W)
            row_stride = (2 * height - 1) * width
            decay_masks = (
                table.as_strided(
                    (height, batch_size * self.num_heads, width, height * width),
                    (width, width * row_stride, row_stride, 1),
                ),
            )  # (H, B*N, W, H*W)
        return SegRetPositionTables(rotation, decay_masks, dense_global_mask)

    def _pair_spread_matrix(self, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """(head_dim, 2 * head_dim) 0/±1 matrix taking (cos_0 .. cos_k-1 | sin_0 .. sin_k-1), k = head_dim / 2, to
        (cos_0, cos_0, cos_1, cos_1, ... | -sin_0, sin_0, -sin_1, sin_1, ...)."""
        pairs = self.head_dim // 2
        rows = torch.arange(self.head_dim, device=device)[:, None]  # cos_i is row i, sin_i row pairs + i
        columns = torch.arange(2 * self.head_dim, device=device)[None, :]
        same_half = rows // pairs == columns // self.head_dim
        same_pair = rows % pairs == (columns % self.head_dim) // 2
        negative = (columns >= self.head_dim) & (columns % 2 == 0)  # -sin on the first channel of a pair
        return (same_half & same_pair).to(dtype) * (1 - 2 * negative.to(dtype))

    @staticmethod
    def _distance_1d(length: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        index = torch.arange(length, dtype=dtype, device=device)
        return (index[:, None] - index[None, :]).abs()

    def extra_repr(self) -> str:
        return f"mode={self.mode}, num_heads={self.num_heads}, head_dim={self.head_dim}"


class SegRetRetention(nn.Module):
    """Manhattan Self-Attention (MaSA): softmax retention with a rotary encoding and a spatial decay mask.

    "global" attends over all tokens with the 2-D Manhattan decay; "decomposed" attends along each row, then along
    each column of the row result, with 1-D decays. A depth-wise 5×5 convolution of the values (LePE) is added to
    the output. RMT scales the keys before rotating them; since the rotation is linear, the scale is passed to the
    attention instead.

    By default both modes run through one `scaled_dot_product_attention` call on 4-D tensors (the fused CPU/GPU
    kernels), whatever the batch size and image size; in a traced graph (dense global mask) global retention takes
    the plain (B, N, H*W, d) layout, which ONNX exports as one `Attention` operator (opset 23). With
    `explicit_attention` (attn_implementation "eager", or `output_attentions=True`) the weights are computed
    explicitly, softmax of the scaled scores plus the decay mask, and returned: (B, N, H*W, H*W) for global retention,
    and for decomposed retention the pair (weights along rows (B, H, N, W, W), weights along columns (B, W, N, H, H)).
    """

    def __init__(self, hidden_size: int, num_heads: int, mode: str) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = hidden_size // num_heads
        self.scaling = self.head_dim**-0.5
        self.mode = mode
        self.q_proj = nn.Linear(hidden_size, hidden_size)
        self.k_proj = nn.Linear(hidden_size, hidden_size)
        self.v_proj = nn.Linear(hidden_size, hidden_size)
        self.lepe = SegRetDepthwiseConv(hidden_size, kernel_size=5)
        self.out_proj = nn.Linear(hidden_size, hidden_size)

    def attend(
        self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor, explicit: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """softmax(scaling * query @ key^T + mask) @ value, and the softmax weights when computed explicitly."""
        if not explicit:
            return F.scaled_dot_product_attention(query, key, value, attn_mask=mask, scale=self.scaling), None
        scores = torch.matmul(query, key.transpose(-1, -2)) * self.scaling + mask
        weights = scores.softmax(dim=-1)
        return torch.matmul(weights, value), weights

    def forward(
        self, hidden_states: torch.Tensor, positions: SegRetPositionTables, explicit_attention: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | tuple[torch.Tensor, torch.Tensor] | None]:
        """The retention output and, with `explicit_attention` (which needs a dense global mask), its weights."""
        batch_size, height, width, hidden_size = hidden_states.shape
        heads_shape = (batch_size, height, width, self.num_heads, self.head_dim)

        value = self.v_proj(hidden_states)
        local_enhancement = self.lepe(value)
        query = apply_rotary_position(self.q_proj(hidden_states).view(heads_shape), positions.rotation)
        key = apply_rotary_position(self.k_proj(hidden_states).view(heads_shape), positions.rotation)
        value = value.view(heads_shape)

        if self.mode == "global" and positions.dense_global_mask:

            def to_heads(states: torch.Tensor) -> torch.Tensor:  # (B, H, W, N, d) -> (B, N, H*W, d)
                return states.reshape(batch_size, height * width, self.num_heads, self.head_dim).transpose(1, 2)

            (mask,) = positions.decay_masks
            output, weights = self.attend(to_heads(query), to_heads(key), to_heads(value), mask, explicit_attention)
            output = output.transpose(1, 2).reshape(batch_size, height, width, hidden_size)
        elif self.mode == "global":
            # Attention batch entries are the image rows (in reverse order, as the mask's windows), attention heads
            # are (image, head) pairs; every row attends to the same keys, an expanded view of one copy.
            def to_heads(states: torch.Tensor) -> torch.Tensor:  # (B, H, W, N, d) -> (1, B*N, H*W, d)
                states = states.permute(0, 3, 1, 2, 4).reshape(
                    1, batch_size * self.num_heads, height * width, self.head_dim
                )
                return states.expand(height, -1, -1, -1)

            query_rows = query.flip(1).permute(1, 0, 3, 2, 4)
            query_rows = query_rows.reshape(height, batch_size * self.num_heads, width, self.head_dim)
            output = F.scaled_dot_product_attention(
                query_rows, to_heads(key), to_heads(value), attn_mask=positions.decay_masks[0], scale=self.scaling
            )  # (H, B*N, W, d)
            weights = None
            # (H, B*N, W, d) -> (B, H, W, N*d), rows back in order
            output = output.unflatten(1, (batch_size, self.num_heads)).flip(0).permute(1, 0, 3, 2, 4)
            output = output.reshape(batch_size, height, width, hidden_size)
        else:
            height_mask, width_mask = positions.decay_masks

            def to_rows(states: torch.Tensor) -> torch.Tensor:  # (B, H, W, N, d) -> (B*H, N, W, d), a view
                return states.reshape(batch_size * height, width, self.num_heads, self.head_dim).transpose(1, 2)

            def to_columns(states: torch.Tensor) -> torch.Tensor:  # (B, H, W, N, d) -> (B*W, N, H, d)
                return states.permute(0, 2, 3, 1, 4).reshape(batch_size * width, self.num_heads, height, self.head_dim)

            along_rows, row_weights = self.attend(
                to_rows(query), to_rows(key), to_rows(value), width_mask, explicit_attention
            )
            # (B*H, N, W, d) -> (B, H, W, N, d), the values of the column pass
            along_rows = along_rows.view(batch_size, height, self.num_heads, width, self.head_dim).transpose(2, 3)
            output, column_weights = self.attend(
                to_columns(query), to_columns(key), to_columns(along_rows), height_mask, explicit_attention
            )
            # (B*W, N, H, d) -> (B, H, W, N*d)
            output = output.view(batch_size, width, self.num_heads, height, self.head_dim).permute(0, 3, 1, 2, 4)
            output = output.reshape(batch_size, height, width, hidden_size)
            weights = None
            if explicit_attention:
                weights = (
                    row_weights.unflatten(0, (batch_size, height)),  # (B, H, N, W, W)
                    column_weights.unflatten(0, (batch_size, width)),  # (B, W, N, H, H)
                )

        return self.out_proj(output + local_enhancement), weights


class SegRetFeedForward(nn.Module):
    """fc1 → GELU → (+ depth-wise 3×3 conv, residual) → fc2."""

    def __init__(self, hidden_size: int, intermediate_size: int, depthwise_conv: bool) -> None:
        super().__init__()
        self.fc1 = nn.Linear(hidden_size, intermediate_size)
        self.activation = nn.GELU()
        self.dwconv = SegRetDepthwiseConv(intermediate_size, kernel_size=3, residual=True) if depthwise_conv else None
        self.fc2 = nn.Linear(intermediate_size, hidden_size)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        hidden_states = self.activation(self.fc1(hidden_states))
        if self.dwconv is not None:
            hidden_states = self.dwconv(hidden_states)  # hidden_states + DWConv(hidden_states)
        return self.fc2(hidden_states)


class SegRetLayer(GradientCheckpointingLayer):
    """RetBlock: conditional position encoding, then retention and FFN residual branches (pre-norm)."""

    def __init__(self, config: SegRetConfig, stage_index: int, drop_path: float) -> None:
        super().__init__()
        hidden_size = config.embed_dims[stage_index]
        self.position_encoding = SegRetDepthwiseConv(hidden_size, kernel_size=3, residual=True)
        self.retention_norm = nn.LayerNorm(hidden_size, eps=1e-6)
        self.retention = SegRetRetention(
            hidden_size, config.num_heads[stage_index], config.retention_modes[stage_index]
        )
        self.ffn_norm = nn.LayerNorm(hidden_size, eps=1e-6)
        self.ffn = SegRetFeedForward(
            hidden_size, int(config.mlp_ratios[stage_index] * hidden_size), config.ffn_depthwise_conv
        )
        if config.use_layer_scale[stage_index]:
            self.retention_layer_scale = nn.Parameter(torch.full((hidden_size,), config.layer_scale_init_value))
            self.ffn_layer_scale = nn.Parameter(torch.full((hidden_size,), config.layer_scale_init_value))
        else:
            self.retention_layer_scale = None
            self.ffn_layer_scale = None
        self.drop_path = SegRetDropPath(drop_path) if drop_path > 0.0 else nn.Identity()

    def forward(
        self, hidden_states: torch.Tensor, positions: SegRetPositionTables, explicit_attention: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | tuple[torch.Tensor, torch.Tensor] | None]:
        """The block's output and its retention weights (None unless `explicit_attention`)."""
        hidden_states = self.position_encoding(hidden_states)  # hidden_states + DWConv(hidden_states)
        retention_output, attention_weights = self.retention(
            self.retention_norm(hidden_states), positions, explicit_attention
        )
        if self.retention_layer_scale is not None:
            retention_output = self.retention_layer_scale * retention_output
        hidden_states = hidden_states + self.drop_path(retention_output)
        ffn_output = self.ffn(self.ffn_norm(hidden_states))
        if self.ffn_layer_scale is not None:
            ffn_output = self.ffn_layer_scale * ffn_output
        return hidden_states + self.drop_path(ffn_output), attention_weights


class SegRetStage(nn.Module):
    """One backbone stage: a stride-2 Conv3×3+BN downsampling (all but the first stage), then RetBlocks."""

    def __init__(self, config: SegRetConfig, stage_index: int, drop_path_rates: Sequence[float]) -> None:
        super().__init__()
        self.config = config  # read at every call: `attn_implementation` can change after loading
        hidden_size = config.embed_dims[stage_index]
        num_heads = config.num_heads[stage_index]
        if stage_index > 0:
            self.downsample = SegRetConvNormLayer(
                config.embed_dims[stage_index - 1], hidden_size, stride=2, activation=False
            )
        else:
            self.downsample = None
        self.relative_position = SegRetRelativePosition(
            head_dim=hidden_size // num_heads,
            num_heads=num_heads,
            init_value=config.decay_init_values[stage_index],
            head_range=config.decay_head_ranges[stage_index],
            mode=config.retention_modes[stage_index],
        )
        self.blocks = nn.ModuleList(SegRetLayer(config, stage_index, rate) for rate in drop_path_rates)

    def forward(
        self, hidden_states: torch.Tensor, output_attentions: bool = False
    ) -> tuple[torch.Tensor, tuple[torch.Tensor | tuple[torch.Tensor, torch.Tensor], ...]]:
        """The stage output and, with `output_attentions`, the retention weights of each block."""
        if self.downsample is not None:
            hidden_states = self.downsample(hidden_states.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        batch_size, height, width, _ = hidden_states.shape
        explicit_attention = output_attentions or self.config._attn_implementation == "eager"
        traced = is_traced()
        positions = self.relative_position(
            batch_size,
            height,
            width,
            hidden_states.dtype,
            hidden_states.device,
            dense_global_mask=explicit_attention or traced or self.dense_mask_is_cheaper(batch_size, width),
            real_rotation=traced,
        )
        attentions = ()
        for block in self.blocks:
            hidden_states, attention_weights = block(hidden_states, positions, explicit_attention)
            if output_attentions:
                attentions += (attention_weights,)
        return hidden_states, attentions

    def dense_mask_is_cheaper(self, batch_size: int, width: int) -> bool:
        """Whether global retention should take the dense (1, N, H*W, H*W) mask in an eager call.

        Without gradients the strided mask of linear size is as fast (measured at 512²) and far smaller. With
        gradients, the strided form's backward materialises the gradients of the keys and values it expands over the
        H query rows, 2 * H * B * N * (H*W) * d values per block, and reduces them again (SegRet-Tiny's training step
        at 512²: a quarter of its time). The dense mask holds N * (H*W)^2 values, shared by the stage's blocks and
        images: no larger whenever W <= 2 * B * d, so it is taken then.
        """
        position = self.relative_position
        return position.mode == "global" and torch.is_grad_enabled() and width <= 2 * batch_size * position.head_dim


class SegRetEncoder(nn.Module):
    """The RMT backbone: stem, four stages, and a LayerNorm on each stage output (RMT's `extra_norms`)."""

    def __init__(self, config: SegRetConfig) -> None:
        super().__init__()
        self.num_channels = config.num_channels
        total_blocks = sum(config.depths)
        rates = [config.drop_path_rate * index / max(total_blocks - 1, 1) for index in range(total_blocks)]
        offsets = [sum(config.depths[:stage]) for stage in range(config.num_stages + 1)]
        self.embeddings = SegRetEmbeddings(config)
        self.stages = nn.ModuleList(
            SegRetStage(config, stage, rates[offsets[stage] : offsets[stage + 1]]) for stage in range(config.num_stages)
        )
        self.output_norms = nn.ModuleList(nn.LayerNorm(dim, eps=1e-5) for dim in config.embed_dims)

    def forward(
        self, pixel_values: torch.Tensor, output_attentions: bool = False
    ) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor | tuple[torch.Tensor, torch.Tensor], ...]]:
        """The stem output and the normalised output of every stage, each (B, C, H, W), and with
        `output_attentions` the retention weights of every block (`SegRetRetention`)."""
        if pixel_values.ndim != 4:
            raise ValueError(
                f"pixel_values must be a 4-D tensor (batch, channels, height, width), got shape "
                f"{tuple(pixel_values.shape)}."
            )
        if pixel_values.shape[1] != self.num_channels:
            raise ValueError(
                f"pixel_values has {pixel_values.shape[1]} channels but the model expects {self.num_channels} "
                f"(shape {tuple(pixel_values.shape)}; images must be (batch, channels, height, width))."
            )
        if not pixel_values.is_floating_point():
            raise ValueError(f"pixel_values must be a floating-point tensor, got {pixel_values.dtype}.")
        weight_dtype = next(self.embeddings.parameters()).dtype
        if pixel_values.dtype != weight_dtype and not torch.is_autocast_enabled(pixel_values.device.type):
            raise ValueError(
                f"pixel_values are {pixel_values.dtype} but the model's weights are {weight_dtype}: cast the input "
                f"with `pixel_values.to(model.dtype)`, the model with `model.to({pixel_values.dtype})`, or run under "
                "`torch.autocast`."
            )

        hidden_states = self.embeddings(pixel_values)
        # The stem map is returned channels-first and the first stage reads it back through the inverse permute (two
        # views, no copy), so the returned tensor itself is on the compute path and receives gradients.
        stem_map = hidden_states.permute(0, 3, 1, 2)
        hidden_states = stem_map.permute(0, 2, 3, 1)
        feature_maps = [stem_map]
        attentions = ()
        for stage, output_norm in zip(self.stages, self.output_norms):
            hidden_states, stage_attentions = stage(hidden_states, output_attentions)
            feature_maps.append(output_norm(hidden_states).permute(0, 3, 1, 2))
            attentions += stage_attentions
        return tuple(feature_maps), attentions


class SegRetZeroInitConv(nn.Conv2d):
    """Convolution whose weight and bias start at zero (SegRet's ZIR branch, 1×1). It keeps `nn.Conv2d`'s
    constructor: PEFT's LoRA builds its low-rank factors as `type(layer)(in_channels, rank, kernel_size, ...)`."""


def runs_as_plain_layer(module: nn.Module, layer_type: type[nn.Module]) -> bool:
    """Whether `module` is exactly a `layer_type` that computes nothing beyond it: not wrapped (a PEFT adapter
    replaces the layer by a module holding it), no forward or backward hook, no instance-level `forward` (as
    Accelerate's offloading hooks install). Only then can its weights stand in for calling it."""
    return (
        type(module) is layer_type
        and not (module._forward_hooks or module._forward_pre_hooks)
        and not (module._backward_hooks or module._backward_pre_hooks)
        and "forward" not in vars(module)
    )


def upsample_linear_by(maps: torch.Tensor, dim: int, factor: int) -> torch.Tensor:
    """Linear upsampling of `maps` along `dim` by an integer `factor`, as bilinear interpolation with
    align_corners=False does it along one axis, written with slices instead of indices.

    Output `factor * j + phase` lies at source position j + offset, offset = (2 * phase + 1 - factor) / (2 * factor),
    between inputs j and j + 1 (offset >= 0) or j - 1 and j; the end positions are clamped (edge replicated).
    """
    length = maps.shape[dim]
    padded = torch.cat((maps.narrow(dim, 0, 1), maps, maps.narrow(dim, length - 1, 1)), dim)  # index k holds k - 1
    phases = []
    for phase in range(factor):
        offset = (2 * phase + 1 - factor) / (2 * factor)
        if offset >= 0:
            phases.append((1 - offset) * padded.narrow(dim, 1, length) + offset * padded.narrow(dim, 2, length))
        else:
            phases.append(-offset * padded.narrow(dim, 0, length) + (1 + offset) * padded.narrow(dim, 1, length))
    return torch.stack(phases, dim + 1).flatten(dim, dim + 1)


def upsample_decoded(maps: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Bilinear resize (align_corners=False) of decoder maps (B, C, h, w) to `size` (stride 4).

    In a training step compiled for a CPU, integer factors are written as slices and weighted sums
    (`upsample_linear_by`): inductor writes the backward of `F.interpolate` as an indexed accumulation that its CPU
    code runs element by element (fused with the BatchNorm's backward: 0.48-0.54 s per compiled step at 512², batch 2,
    where ATen's kernels take under 0.05 s), whereas the backward of slices is a gather it vectorises (0.02 s;
    BENCHMARKS.md). Same function up to float rounding; eager mode, exports and other devices use `F.interpolate`.
    """
    height, width = maps.shape[-2:]
    if (
        torch.compiler.is_compiling()
        and not torch.compiler.is_exporting()
        and maps.requires_grad
        and maps.device.type == "cpu"
        and size[0] % height == 0
        and size[1] % width == 0
    ):
        return upsample_linear_by(upsample_linear_by(maps, 3, size[1] // width), 2, size[0] // height)
    return F.interpolate(maps, size=size, mode="bilinear", align_corners=False)


class SegRetDecodeHead(nn.Module):
    """SegRet's lightweight residual decoder.

    As written, each stage map F_i goes to C channels through a per-pixel linear map plus a zero-initialised 1×1
    convolution (ZIR, the residual that starts as a no-op), is upsampled to stride 4, and the four are concatenated
    as [F4, F3, F2, F1] and fused by Conv1×1 (4C→C, no bias) + BatchNorm + ReLU, then Dropout2d and a 1×1
    classifier.

    It runs folded, computing the same function with a fraction of the work: every map before the BatchNorm is
    linear and bilinear upsampling commutes with channel mixing, so the fuse convolution's input equals
    sum_i up(M_i F_i) + b with one C×c_i matrix M_i = Fuse_i · (Linear_i + ZIR_i) per stage, applied at the stage's
    own resolution. That skips the 4C-channel concatenation at stride 4 and most of the decoder's multiply-adds.
    When the BatchNorm uses its running statistics (eval mode) its scale and shift are folded in as well; when it
    normalises with batch statistics (training) it runs on the folded sum, which is the same tensor as the fuse
    output. The folded weights are computed from the current parameters on every call (about 63M multiply-adds for
    C = 256), differentiably, so gradients reach every original parameter and a weight change is never served
    stale.

    Folding reads the layers' weights instead of calling them, so it only runs while every layer it replaces is a
    plain layer (see `runs_as_plain_layer`). A projection, residual or fuse convolution wrapped by an adapter (PEFT's
    LoRA), hooked or with a replaced `forward` makes the decoder run as written, calling each layer; a wrapped
    BatchNorm is called rather than folded. Set `fold = False` to run the layers as written in any case (to count
    their FLOPs).
    """

    def __init__(self, config: SegRetConfig) -> None:
        super().__init__()
        hidden_size = config.decoder_hidden_size
        # Per-pixel linear maps, written as 1×1 convolutions so the maps stay channels-first.
        self.linear_projections = nn.ModuleList(nn.Conv2d(dim, hidden_size, 1) for dim in config.embed_dims)
        self.zero_init_residuals = nn.ModuleList(SegRetZeroInitConv(dim, hidden_size, 1) for dim in config.embed_dims)
        self.fuse = nn.Conv2d(hidden_size * config.num_stages, hidden_size, 1, bias=False)
        self.batch_norm = nn.BatchNorm2d(hidden_size)
        self.activation = nn.ReLU(inplace=True)  # its input is always a fresh tensor of the decoder
        self.dropout = nn.Dropout2d(config.decoder_dropout)
        self.classifier = nn.Conv2d(hidden_size, config.num_labels, 1)
        self.fold = True

    def forward(self, stage_maps: Sequence[torch.Tensor]) -> torch.Tensor:
        """(B, c_i, H/2^(i+1), W/2^(i+1)) for i = 1..4 -> logits (B, num_labels, H/4, W/4)."""
        batch_norm = self.batch_norm
        if not (self.fold and self.can_fold()):
            fused = batch_norm(self.fuse(self.concatenated_projections(stage_maps)))
        elif (
            runs_as_plain_layer(batch_norm, nn.BatchNorm2d)
            and not batch_norm.training
            and batch_norm.running_mean is not None
        ):
            fused = self.folded_fuse(stage_maps, fold_batch_norm=True)
        else:  # batch statistics (training), or a wrapped BatchNorm: it runs on the folded sum, the fuse output
            fused = batch_norm(self.folded_fuse(stage_maps, fold_batch_norm=False))
        return self.classifier(self.dropout(self.activation(fused)))

    def can_fold(self) -> bool:
        """Whether every convolution that folding replaces is a plain layer, so reading its weights computes what
        calling it would."""
        return runs_as_plain_layer(self.fuse, nn.Conv2d) and all(
            runs_as_plain_layer(projection, nn.Conv2d) and runs_as_plain_layer(residual, SegRetZeroInitConv)
            for projection, residual in zip(self.linear_projections, self.zero_init_residuals)
        )

    def concatenated_projections(self, stage_maps: Sequence[torch.Tensor]) -> torch.Tensor:
        """The decoder as written up to the fuse convolution: [F̃4, F̃3, F̃2, F̃1] at stride 4, (B, 4C, H/4, W/4)."""
        output_size = stage_maps[0].shape[2:]
        decoded = []
        for stage_map, projection, residual in zip(stage_maps, self.linear_projections, self.zero_init_residuals):
            stage_decoded = projection(stage_map) + residual(stage_map)
            if stage_decoded.shape[2:] != output_size:
                stage_decoded = upsample_decoded(stage_decoded, output_size)
            decoded.append(stage_decoded)
        return torch.cat(decoded[::-1], dim=1)

    def folded_weights(self, fold_batch_norm: bool) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Per-stage weights M_i (C, c_i, 1, 1) and the bias (C,) of the folded decoder, from the current parameters.

        M_i = Fuse_i · (Linear_i + ZIR_i), with Fuse_i the fuse convolution's input slice of stage i; the biases of
        all stages add up to one bias. With `fold_batch_norm`, M_i and the bias also take the BatchNorm's
        running-statistics scale and shift. Folded in float32 (float64 for float64 models), then cast to the
        parameters' dtype.
        """
        dtype = self.fuse.weight.dtype
        fold_dtype = torch.float64 if dtype == torch.float64 else torch.float32
        batch_norm = self.batch_norm
        fuse_slices = self.fuse.weight.to(fold_dtype).flatten(1).chunk(len(self.linear_projections), dim=1)[::-1]
        weights = []
        bias = 0
        for fuse_slice, projection, residual in zip(fuse_slices, self.linear_projections, self.zero_init_residuals):
            stage_weight = (projection.weight + residual.weight).to(fold_dtype).flatten(1)  # (C, c_i)
            stage_bias = (projection.bias + residual.bias).to(fold_dtype)
            weights.append(fuse_slice @ stage_weight)
            bias = bias + fuse_slice @ stage_bias
        if fold_batch_norm:
            variance = batch_norm.running_var.to(fold_dtype)
            scale = batch_norm.weight.to(fold_dtype) * torch.rsqrt(variance + batch_norm.eps)
            weights = [scale[:, None] * weight for weight in weights]
            bias = scale * (bias - batch_norm.running_mean.to(fold_dtype)) + batch_norm.bias.to(fold_dtype)
        return [weight.to(dtype)[..., None, None] for weight in weights], bias.to(dtype)

    def folded_fuse(self, stage_maps: Sequence[torch.Tensor], fold_batch_norm: bool) -> torch.Tensor:
        """`fuse(concatenated_projections(stage_maps))`, or with `fold_batch_norm` its eval-mode BatchNorm, computed
        as sum_i up(M_i F_i) + b."""
        weights, bias = self.folded_weights(fold_batch_norm)
        output_size = stage_maps[0].shape[2:]
        fused = None
        for stage_map, weight in zip(stage_maps, weights):
            # Upsampling a constant gives the same constant, so the summed bias joins the map at stride 4.
            stage_fused = F.conv2d(stage_map, weight, bias if fused is None else None)
            if stage_fused.shape[2:] != output_size:
                stage_fused = upsample_decoded(stage_fused, output_size)
            # In place also under autograd: no backward formula keeps a convolution's output.
            fused = stage_fused if fused is None else fused.add_(stage_fused)
        return fused


class UpsampledCrossEntropy(torch.autograd.Function):
    """The summed cross-entropy of bilinearly upsampled logits, with its gradient formed in the forward pass.

    Its gradient with respect to the upsampled logits is softmax - one-hot on labelled pixels and 0 on ignored ones;
    it is written over the log-softmax's own buffer once the loss has been read from it, and the backward pass only
    runs the upsampling's backward on it. Autograd's chain of the same operations (log-softmax, nll and their
    backward) allocates two more (B, H, W, K) tensors in the backward pass, each newly mapped and zero-filled or
    written page by page: in a profiled training step at 512², batch 2, 150 classes, that chain took 0.7 s and this
    form 0.3 s. With `create_graph=True` the backward pass recomputes the chain, so second derivatives are autograd's.
    """

    @staticmethod
    def forward(ctx, logits: torch.Tensor, labels: torch.Tensor, ignore_index: int) -> torch.Tensor:
        num_labels = logits.shape[1]
        # Channels-last: bilinear upsampling is faster, and the softmax runs over contiguous rows of num_labels
        # scores, vectorised along the classes.
        upsampled_logits = F.interpolate(
            logits.contiguous(memory_format=torch.channels_last),
            size=labels.shape[-2:],
            mode="bilinear",
            align_corners=False,
        )
        pixel_logits = upsampled_logits.permute(0, 2, 3, 1).reshape(-1, num_labels)  # (B*H*W, K), a view
        # float32 for float16/bfloat16 logits, as autocast runs the cross-entropy.
        log_probs = torch.log_softmax(pixel_logits, dim=1, dtype=torch.promote_types(logits.dtype, torch.float32))
        del upsampled_logits, pixel_logits
        pixel_labels = labels.reshape(-1)
        labelled = (pixel_labels != ignore_index)[:, None]  # (B*H*W, 1)
        targets = pixel_labels[:, None].long().masked_fill(~labelled, 0)  # ignored pixels pick class 0, masked below
        target_log_probs = log_probs.gather(1, targets)
        loss = torch.where(labelled, -target_log_probs, 0).sum()
        if ctx.needs_input_grad[0]:
            pixel_grad = log_probs.exp_()
            pixel_grad.scatter_add_(1, targets, torch.full_like(target_log_probs, -1))
            pixel_grad.mul_(labelled)
            ctx.save_for_backward(pixel_grad, logits, labels)
            ctx.ignore_index = ignore_index
        return loss

    @staticmethod
    def backward(ctx, grad_loss: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        pixel_grad, logits, labels = ctx.saved_tensors
        if torch.is_grad_enabled():  # backward(create_graph=True): autograd's chain, twice differentiable
            with torch.enable_grad():
                upsampled_logits = F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=False)
                loss = F.cross_entropy(upsampled_logits, labels.long(), ignore_index=ctx.ignore_index, reduction="sum")
            (grad_logits,) = torch.autograd.grad(loss, logits, grad_loss, create_graph=True)
            return grad_logits, None, None
        batch_size, num_labels = logits.shape[:2]
        label_size = list(labels.shape[-2:])
        grad_upsampled = pixel_grad.view(batch_size, *label_size, num_labels).permute(0, 3, 1, 2)
        grad_logits = torch.ops.aten.upsample_bilinear2d_backward(grad_upsampled, label_size, list(logits.shape), False)
        # The upsampling's backward is linear, so the loss's gradient scales its (smaller) result.
        return (grad_logits * grad_loss).to(logits.dtype), None, None


def upsampled_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int) -> torch.Tensor:
    """Cross-entropy summed over the pixels of `labels` (B, H, W) that are not `ignore_index`, of the logits
    (B, K, h, w) resized bilinearly to (H, W)."""
    return UpsampledCrossEntropy.apply(logits, labels, ignore_index)


# On CPU, torch.compile runs the loss with ATen's kernels, as in eager mode. Inductor's CPU code for it (the
# upsampling's backward as an indexed accumulation, fused with a 150-class log-softmax and its backward) took 2.2 s
# of a profiled 5.9 s compiled training step at 512², batch 2, where ATen's kernels take 0.5 s; the model around it
# stays compiled. Other devices are left to inductor (not measured).
upsampled_cross_entropy_outside_compile = torch.compiler.disable(upsampled_cross_entropy)


class SegRetPreTrainedModel(PreTrainedModel):
    config: SegRetConfig
    base_model_prefix = "segret"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    supports_gradient_checkpointing = True
    _no_split_modules = ["SegRetStage"]
    # Retention runs through `scaled_dot_product_attention` ("sdpa", the default); "eager" computes its weights
    # explicitly (`SegRetRetention`), which `output_attentions=True` returns.
    _supports_sdpa = True
    # The loss is a per-batch mean that ignores `num_items_in_batch`: without this, `Trainer` infers from
    # `forward(**kwargs)` that the model averages over accumulation steps and skips its own division.
    accepts_loss_kwargs = False

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike | None, *model_args, **kwargs):
        """
        transformers' `from_pretrained`, then checks of what it loaded, so that a damaged or incomplete checkpoint is
        an error rather than a model predicting from random or non-finite weights:

        - a weights file that cannot be read (truncated, corrupt header) is an `OSError` naming the file;
        - weights of this class that the checkpoint lacks are a `ValueError` naming them, unless
          `ignore_mismatched_sizes=True` asks for new, randomly initialised weights (new heads, a backbone-only
          checkpoint), as it does for weights of another shape;
        - NaN or infinite weights are a `ValueError` naming the tensors.

        The Auto classes, `pipeline(...)` and the Hub's remote code call this method, so they check alike. A model
        built from a config (`SegRetForSemanticSegmentation(config)`) loads nothing and is not checked.
        """
        output_loading_info = kwargs.pop("output_loading_info", False)
        try:
            model, loading_info = super().from_pretrained(
                pretrained_model_name_or_path, *model_args, output_loading_info=True, **kwargs
            )
        except Exception as error:
            damaged = damaged_weight_files(pretrained_model_name_or_path, kwargs)
            if not damaged:
                raise
            raise OSError(
                f"Cannot read the weights of {pretrained_model_name_or_path}: {'; '.join(damaged)}. The file is "
                "damaged (e.g. an interrupted download or copy): download it again (for a Hub model, "
                "`force_download=True`) or save / convert the model again."
            ) from error
        source = f"The checkpoint {pretrained_model_name_or_path}"
        missing = sorted(loading_info.get("missing_keys") or ())
        if missing and not kwargs.get("ignore_mismatched_sizes"):
            raise ValueError(
                f"{source} lacks {len(missing)} weights of {cls.__name__}: {_name_list(missing)}. They would start "
                "from random values and every prediction would be meaningless. If the checkpoint is damaged, "
                "download or save it again; to train new weights on purpose (new heads, a backbone-only "
                "checkpoint), pass ignore_mismatched_sizes=True (training: --ignore_mismatched_sizes)."
            )
        non_finite = [
            name
            for name, tensor in model.state_dict().items()
            if tensor.is_floating_point() and tensor.device.type != "meta" and not bool(tensor.isfinite().all())
        ]
        if non_finite:
            raise ValueError(
                f"{source} has NaN or infinite values in {len(non_finite)} weights: {_name_list(non_finite)}. The "
                "file is damaged (or was saved from a diverged training run): download, save or convert it again."
            )
        return (model, loading_info) if output_loading_info else model

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """RMT's initialisation (truncated-normal linears, PyTorch-default convolutions) and zero ZIR convolutions."""
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            init.trunc_normal_(module.weight, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, SegRetZeroInitConv):
            init.zeros_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, nn.Conv2d):
            # PyTorch's default, which the official RMT code keeps: U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
            bound = 1.0 / math.sqrt(module.weight[0].numel())
            init.uniform_(module.weight, -bound, bound)
            if module.bias is not None:
                init.uniform_(module.bias, -bound, bound)
        elif isinstance(module, (nn.LayerNorm, nn.BatchNorm2d)):
            init.ones_(module.weight)
            init.zeros_(module.bias)
            if isinstance(module, nn.BatchNorm2d):
                init.zeros_(module.running_mean)
                init.ones_(module.running_var)
                init.zeros_(module.num_batches_tracked)
        elif isinstance(module, SegRetLayer) and module.retention_layer_scale is not None:
            init.constant_(module.retention_layer_scale, self.config.layer_scale_init_value)
            init.constant_(module.ffn_layer_scale, self.config.layer_scale_init_value)

    def output_options(
        self, kwargs: dict, output_hidden_states: bool | None, output_attentions: bool | None
    ) -> tuple[bool, bool]:
        """The forward's output flags, the config's where not given, after checking that `kwargs` is empty.

        `forward(**kwargs)` only keeps transformers' generic call signature: a name left in it (`label=` for
        `labels=`) would otherwise vanish silently. `return_dict` is consumed before, by `can_return_tuple`.
        """
        if kwargs:
            self.raise_unknown_arguments(kwargs)
        return (
            self.config.output_hidden_states if output_hidden_states is None else output_hidden_states,
            self.config.output_attentions if output_attentions is None else output_attentions,
        )

    def raise_unknown_arguments(self, kwargs: dict) -> None:
        accepted = [name for name in inspect.signature(self.forward).parameters if name != "kwargs"]
        accepted.append("return_dict")
        unknown = []
        for name in kwargs:
            close = difflib.get_close_matches(name, accepted, n=1)
            unknown.append(f"{name!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        raise TypeError(
            f"{type(self).__name__}.forward() got unexpected keyword argument(s) {', '.join(unknown)}; it accepts "
            f"{', '.join(accepted)}."
        )


def _name_list(names: Sequence[str], limit: int = 10) -> str:
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


def damaged_weight_files(pretrained_model_name_or_path: str | os.PathLike | None, kwargs: dict) -> list[str]:
    """The safetensors files of a local folder, or of a Hub repository in the local cache, that cannot be opened,
    each with the reason (safetensors' own errors name no file)."""
    if pretrained_model_name_or_path is None:
        return []
    subfolder = kwargs.get("subfolder") or ""
    folder = os.path.join(os.fspath(pretrained_model_name_or_path), subfolder)
    if os.path.isdir(folder):
        files = sorted(glob.glob(os.path.join(folder, "*.safetensors")))
    else:

        def cached(name: str) -> str | None:
            path = try_to_load_from_cache(
                os.fspath(pretrained_model_name_or_path),
                f"{subfolder}/{name}" if subfolder else name,
                cache_dir=kwargs.get("cache_dir"),
                revision=kwargs.get("revision"),
            )
            return path if isinstance(path, str) else None

        files = [cached("model.safetensors")]
        index = cached("model.safetensors.index.json")
        if index is not None:
            with open(index) as index_file:
                files += [cached(name) for name in sorted(set(json.load(index_file).get("weight_map", {}).values()))]
        files = [file for file in files if file is not None]
    damaged = []
    for file in files:
        try:
            with safe_open(file, framework="pt") as weights:
                weights.keys()
        except Exception as error:  # safetensors raises its own SafetensorError, and OSError for unreadable files
            damaged.append(f"{file} ({error})")
    return damaged


class SegRetModel(SegRetPreTrainedModel):
    """The bare RMT backbone; `last_hidden_state` is the normalised last stage map (B, C4, H/32, W/32)."""

    def __init__(self, config: SegRetConfig) -> None:
        super().__init__(config)
        self.encoder = SegRetEncoder(config)
        self.post_init()

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        **kwargs,
    ) -> BaseModelOutput:
        r"""
        pixel_values (`torch.FloatTensor` of shape `(batch_size, num_channels, height, width)`):
            Normalised images, e.g. from [`SegRetImageProcessor`]. Any height and width.
        output_hidden_states (`bool`, *optional*):
            Also return `hidden_states`: the stem output and the four normalised stage maps (strides 4, 4, 8, 16, 32).
        output_attentions (`bool`, *optional*):
            Also return `attentions`, the retention weights of every block, computed explicitly (as with
            `attn_implementation="eager"`): for a global-retention block a tensor (B, N, h*w, h*w) over the stage's
            h×w tokens in raster order, for a decomposed-retention block the pair (weights along rows (B, h, N, w, w),
            weights along columns (B, w, N, h, h)); N is the block's number of heads.
        """
        output_hidden_states, output_attentions = self.output_options(kwargs, output_hidden_states, output_attentions)
        feature_maps, attentions = self.encoder(pixel_values, output_attentions)
        return BaseModelOutput(
            last_hidden_state=feature_maps[-1],
            hidden_states=feature_maps if output_hidden_states else None,
            attentions=attentions if output_attentions else None,
        )


class SegRetBackbone(BackboneMixin, SegRetPreTrainedModel):
    """RMT backbone for other frameworks (e.g. UperNet): returns the maps of `config.out_features`."""

    def __init__(self, config: SegRetConfig) -> None:
        super().__init__(config)
        self.encoder = SegRetEncoder(config)
        self.num_features = [config.embed_dims[0]] + list(config.embed_dims)
        self.post_init()

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        **kwargs,
    ) -> BackboneOutput:
        r"""
        pixel_values (`torch.FloatTensor` of shape `(batch_size, num_channels, height, width)`):
            Normalised images.
        output_hidden_states (`bool`, *optional*):
            Also return all five maps of `stage_names` as `hidden_states`.
        output_attentions (`bool`, *optional*):
            Also return the retention weights of every block as `attentions` (shapes: [`SegRetModel`]).
        """
        output_hidden_states, output_attentions = self.output_options(kwargs, output_hidden_states, output_attentions)
        all_maps, attentions = self.encoder(pixel_values, output_attentions)
        return BackboneOutput(
            feature_maps=tuple(all_maps[index] for index in self.out_indices),
            hidden_states=all_maps if output_hidden_states else None,
            attentions=attentions if output_attentions else None,
        )


class SegRetForSemanticSegmentation(SegRetPreTrainedModel):
    """SegRet: the RMT backbone and the residual decoder; logits at 1/4 of the input resolution."""

    def __init__(self, config: SegRetConfig) -> None:
        super().__init__(config)
        self.segret = SegRetModel(config)
        self.decode_head = SegRetDecodeHead(config)
        self.post_init()

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor,
        labels: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        pixel_mask: torch.Tensor | None = None,
        **kwargs,
    ) -> SemanticSegmenterOutput:
        r"""
        pixel_values (`torch.FloatTensor` of shape `(batch_size, num_channels, height, width)`):
            Normalised images, e.g. from [`SegRetImageProcessor`]. Any height and width.
        labels (`torch.LongTensor` of shape `(batch_size, label_height, label_width)`, *optional*):
            Class indices in `[0, num_labels)` or `config.semantic_loss_ignore_index`, at any resolution (usually the
            input's): the logits are resized bilinearly to it before the cross-entropy.
        output_hidden_states (`bool`, *optional*):
            Also return the backbone's `hidden_states` (stem output and the four normalised stage maps).
        output_attentions (`bool`, *optional*):
            Also return the retention weights of every block as `attentions` (shapes: [`SegRetModel`]).
        pixel_mask (`torch.LongTensor` of shape `(batch_size, height, width)`, *optional*):
            For images padded at the bottom and right to one size (`SegRetImageProcessor(do_pad=True)`): 1 on each
            image's pixels, 0 on its padding. Each image then runs at its own size (images of equal size together)
            and its logits fill the top-left `ceil(h / 4) x ceil(w / 4)` of the padded output (zeros elsewhere), so
            padding never changes a prediction; post-processing crops it off. Inference only.

        Example:
        ```python
        >>> import torch
        >>> from modeling_segret import SegRetConfig, SegRetForSemanticSegmentation
        >>> model = SegRetForSemanticSegmentation(SegRetConfig(num_labels=150)).eval()
        >>> model(torch.randn(1, 3, 512, 512)).logits.shape
        torch.Size([1, 150, 128, 128])
        ```"""
        output_hidden_states, output_attentions = self.output_options(kwargs, output_hidden_states, output_attentions)
        if pixel_mask is not None and not bool(pixel_mask.all()):
            if labels is not None or output_hidden_states or output_attentions:
                raise ValueError(
                    "A pixel_mask with padding is for inference: pass labels, output_hidden_states=True and "
                    "output_attentions=True only with unpadded images (SegRetImageProcessor(do_pad=False)) or a mask "
                    "of ones."
                )
            return SemanticSegmenterOutput(logits=self.padded_batch_logits(pixel_values, pixel_mask))
        outputs = self.segret(
            pixel_values, output_hidden_states=True, output_attentions=output_attentions, return_dict=True
        )
        logits = self.decode_head(outputs.hidden_states[1:])  # channels-last memory, as the convolutions leave it
        loss = self.compute_loss(logits, labels) if labels is not None else None
        # Channels-first memory for the caller: post-processing, exports and users index the logits by class plane
        # (one copy of the logits, cheaper than every later operation on strided class planes).
        logits = logits.contiguous()
        return SemanticSegmenterOutput(
            loss=loss,
            logits=logits,
            hidden_states=outputs.hidden_states if output_hidden_states else None,
            attentions=outputs.attentions,
        )

    def padded_batch_logits(self, pixel_values: torch.Tensor, pixel_mask: torch.Tensor) -> torch.Tensor:
        """Logits (B, K, ceil(H/4), ceil(W/4)) of a padded batch, each image run at its own (top-left) size."""
        batch_size, _, height, width = pixel_values.shape
        if pixel_mask.shape != (batch_size, height, width):
            raise ValueError(
                f"pixel_mask must have shape (batch_size, height, width) = {(batch_size, height, width)}, got "
                f"{tuple(pixel_mask.shape)}."
            )
        image_sizes = []
        for index, mask in enumerate(pixel_mask.bool()):
            image_size = (int(mask[:, 0].sum()), int(mask[0].sum()))
            if min(image_size) == 0 or mask.sum() != image_size[0] * image_size[1] or not mask[0, 0]:
                raise ValueError(
                    f"pixel_mask of image {index} is not one top-left rectangle of ones (padding at the bottom and "
                    "right, as SegRetImageProcessor(do_pad=True) makes it)."
                )
            image_sizes.append(image_size)
        logits = None
        for image_size in dict.fromkeys(image_sizes):
            indices = [index for index, size in enumerate(image_sizes) if size == image_size]
            images = pixel_values[indices, :, : image_size[0], : image_size[1]]
            group_logits = self(images).logits
            if logits is None:
                logits_size = (math.ceil(height / 4), math.ceil(width / 4))
                logits = group_logits.new_zeros((batch_size, group_logits.shape[1], *logits_size))
            logits[indices, :, : group_logits.shape[2], : group_logits.shape[3]] = group_logits
        return logits

    def compute_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of the logits resized (bilinear) to the labels' size, ignoring `semantic_loss_ignore_index`.

        Averaged over the labelled pixels (PyTorch's convention; 0 for a batch with none), or over all pixels when
        `config.loss_average_over_all_pixels` is set (MMSegmentation's `avg_non_ignore=False`, which the paper used).
        """
        num_labels = self.config.num_labels
        ignore_index = self.config.semantic_loss_ignore_index
        if num_labels < 2:
            raise ValueError(
                f"The SegRet loss needs num_labels >= 2, got {num_labels}; use two classes for a binary task."
            )
        if labels.ndim != 3 or labels.shape[0] != logits.shape[0]:
            raise ValueError(
                f"labels must have shape (batch_size, height, width) with batch_size {logits.shape[0]}, got "
                f"{tuple(labels.shape)}."
            )
        if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
            raise ValueError(f"labels must be an integer tensor of class indices, got {labels.dtype}.")
        labelled = labels != ignore_index
        invalid = labelled & ((labels < 0) | (labels >= num_labels))
        if invalid.any():
            bad_values = labels[invalid].unique()[:10].tolist()
            raise ValueError(
                f"labels contain {bad_values} which are neither a class index in [0, {num_labels}) nor the ignore "
                f"index {ignore_index}."
            )
        if logits.device.type == "cpu":
            summed_loss = upsampled_cross_entropy_outside_compile(logits, labels, ignore_index)
        else:
            summed_loss = upsampled_cross_entropy(logits, labels, ignore_index)
        if self.config.loss_average_over_all_pixels:
            normalizer = max(labels.numel(), 1)  # a batch of 0 images has loss 0, not 0 / 0
        else:
            normalizer = labelled.sum().clamp(min=1)
        return summed_loss / normalizer


# So that `pipeline("image-segmentation")` logs no "not supported" error for SegRet: done here, where both the package
# and the Hub folder's code define the class.
allow_in_image_segmentation_pipeline(SegRetConfig.model_type, "SegRetForSemanticSegmentation")

__all__ = [
    "SegRetPreTrainedModel",
    "SegRetModel",
    "SegRetBackbone",
    "SegRetForSemanticSegmentation",
]
