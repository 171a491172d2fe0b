"""The official RMT / SegRet formulation, run on a SegRet model's weights: a test oracle and a benchmark baseline.

This re-implements the forward pass the way the official code writes it (github.com/qhfan/RMT,
`segmentation/mmseg/models/backbones/RMT.py`, and the SegRet head as an MMSegmentation decode head), from
docs/architecture.md §1-4, without calling any `forward` of `modeling_segret` (only its parameters and buffers are
read):

- relative-position tables recomputed at every stage call (`RetNetRelPos2d.forward`), the (N, L, L) global decay
  mask materialised in full;
- retention on 5-D tensors (batch, heads, height, width, head_dim) with explicit `q @ k.T + mask`, softmax and a
  second matrix product; keys scaled before their rotation;
- the decoder unfolded: per-stage linear maps on flattened tokens, ZIR 1×1 convolutions, upsampling, a 4C-channel
  concatenation, the fuse convolution, BatchNorm (batch statistics in training, running ones in eval) and ReLU.

It differs from the model only by floating-point rounding (tests/test_speed_paths.py).
"""

import torch
import torch.nn.functional as F
from torch import nn


def official_relative_position(
    num_heads: int, head_dim: int, init_value: float, head_range: float, height: int, width: int, mode: str, dtype
):
    """`RetNetRelPos2d.forward`: ((sin, cos), mask) with mask (N, L, L) for "global", (mask_h, mask_w) otherwise."""
    # The buffers `angle` and `decay` are float32 and follow the model's dtype. The official model loads them from
    # its checkpoint, whose values are the correctly rounded float32 results of these formulas; float32 `pow` / `log`
    # kernels are one unit in the last place off on some CPUs (AVX-512), so each is evaluated in float64 and rounded.
    angle = 1.0 / (10000 ** torch.linspace(0, 1, head_dim // 2).double()).float()
    angle = angle.unsqueeze(-1).repeat(1, 2).flatten().to(dtype)
    exponent = -init_value - head_range * torch.arange(num_heads, dtype=torch.float) / num_heads
    decay = torch.log((1 - (2 ** exponent.double()).float()).double()).float()
    decay = decay.to(dtype)

    index = torch.arange(height * width).to(decay)
    sin = torch.sin(index[:, None] * angle[None, :]).reshape(height, width, -1)
    cos = torch.cos(index[:, None] * angle[None, :]).reshape(height, width, -1)

    def decay_1d(length):
        position = torch.arange(length).to(decay)
        return (position[:, None] - position[None, :]).abs() * decay[:, None, None]

    if mode == "global":
        grid = torch.stack(torch.meshgrid(torch.arange(height).to(decay), torch.arange(width).to(decay), indexing="ij"))
        grid = grid.permute(1, 2, 0).reshape(height * width, 2)
        distance = (grid[:, None, :] - grid[None, :, :]).abs().sum(dim=-1)
        return (sin, cos), distance * decay[:, None, None]
    return (sin, cos), (decay_1d(height), decay_1d(width))


def rotate_every_two(x: torch.Tensor) -> torch.Tensor:
    x1 = x[:, :, :, :, ::2]
    x2 = x[:, :, :, :, 1::2]
    return torch.stack([-x2, x1], dim=-1).flatten(-2)


def theta_shift(x: torch.Tensor, sin: torch.Tensor, cos: torch.Tensor) -> torch.Tensor:
    return (x * cos) + (rotate_every_two(x) * sin)


def depthwise_conv_channels_last(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """The official `DWConv2d`: (b, h, w, c) -> permute -> conv -> permute back."""
    x = x.permute(0, 3, 1, 2)
    x = F.conv2d(x, conv.weight, conv.bias, padding=conv.padding, groups=conv.groups)
    return x.permute(0, 2, 3, 1)


def official_retention(retention, x: torch.Tensor, rel_pos, mode: str) -> torch.Tensor:
    """`VisionRetentionAll` ("global") and `VisionRetentionChunk` ("decomposed") on 5-D tensors."""
    bsz, h, w, _ = x.size()
    num_heads = retention.num_heads
    (sin, cos), mask = rel_pos
    q = F.linear(x, retention.q_proj.weight, retention.q_proj.bias)
    k = F.linear(x, retention.k_proj.weight, retention.k_proj.bias)
    v = F.linear(x, retention.v_proj.weight, retention.v_proj.bias)
    lepe = depthwise_conv_channels_last(retention.lepe, v)

    k = k * retention.head_dim**-0.5
    q = q.view(bsz, h, w, num_heads, -1).permute(0, 3, 1, 2, 4)  # (b n h w d1)
    k = k.view(bsz, h, w, num_heads, -1).permute(0, 3, 1, 2, 4)
    qr = theta_shift(q, sin, cos)
    kr = theta_shift(k, sin, cos)

    if mode == "global":
        qr = qr.flatten(2, 3)  # (b n l d1)
        kr = kr.flatten(2, 3)
        vr = v.reshape(bsz, h, w, num_heads, -1).permute(0, 3, 1, 2, 4).flatten(2, 3)  # (b n l d2)
        qk_mat = qr @ kr.transpose(-1, -2) + mask  # (b n l l)
        qk_mat = torch.softmax(qk_mat, -1)
        output = torch.matmul(qk_mat, vr)  # (b n l d2)
        output = output.transpose(1, 2).reshape(bsz, h, w, -1)
    else:
        mask_h, mask_w = mask
        qr_w = qr.transpose(1, 2)  # (b h n w d1)
        kr_w = kr.transpose(1, 2)
        v = v.reshape(bsz, h, w, num_heads, -1).permute(0, 1, 3, 2, 4)  # (b h n w d2)
        qk_mat_w = torch.softmax(qr_w @ kr_w.transpose(-1, -2) + mask_w, -1)  # (b h n w w)
        v = torch.matmul(qk_mat_w, v)  # (b h n w d2)

        qr_h = qr.permute(0, 3, 1, 2, 4)  # (b w n h d1)
        kr_h = kr.permute(0, 3, 1, 2, 4)
        v = v.permute(0, 3, 2, 1, 4)  # (b w n h d2)
        qk_mat_h = torch.softmax(qr_h @ kr_h.transpose(-1, -2) + mask_h, -1)  # (b w n h h)
        output = torch.matmul(qk_mat_h, v)  # (b w n h d2)
        output = output.permute(0, 3, 1, 2, 4).flatten(-2, -1)  # (b h w n*d2)
    return F.linear(output + lepe, retention.out_proj.weight, retention.out_proj.bias)


def official_block(block, x: torch.Tensor, rel_pos, mode: str) -> torch.Tensor:
    """`RetBlock` at inference (drop path is the identity)."""
    x = x + depthwise_conv_channels_last(block.position_encoding, x)
    norm = block.retention_norm
    retention = official_retention(
        block.retention, F.layer_norm(x, norm.normalized_shape, norm.weight, norm.bias, norm.eps), rel_pos, mode
    )
    if block.retention_layer_scale is not None:
        retention = block.retention_layer_scale * retention
    x = x + retention

    norm, ffn = block.ffn_norm, block.ffn
    y = F.layer_norm(x, norm.normalized_shape, norm.weight, norm.bias, norm.eps)
    y = F.gelu(F.linear(y, ffn.fc1.weight, ffn.fc1.bias))
    if ffn.dwconv is not None:
        y = y + depthwise_conv_channels_last(ffn.dwconv, y)
    y = F.linear(y, ffn.fc2.weight, ffn.fc2.bias)
    if block.ffn_layer_scale is not None:
        y = block.ffn_layer_scale * y
    return x + y


def conv_norm(layer, x: torch.Tensor) -> torch.Tensor:
    return layer.normalization(layer.convolution(x))


class OfficialRMTBackbone(nn.Module):
    """The RMT backbone in the official formulation, on the weights of a SegRet encoder (`model.segret.encoder`)."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The four normalised stage maps (B, C_i, H_i, W_i), as the official `forward_features`."""
        x = pixel_values
        for index, layer in enumerate(self.encoder.embeddings.layers):  # `PatchEmbed.proj`
            x = conv_norm(layer, x)
            if index < 3:
                x = F.gelu(x)
        x = x.permute(0, 2, 3, 1)  # (b h w c)

        outputs = []
        for stage, norm in zip(self.encoder.stages, self.encoder.output_norms):
            if stage.downsample is not None:  # the previous official layer's `PatchMerging`
                x = conv_norm(stage.downsample, x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
            _, height, width, _ = x.shape
            position = stage.relative_position
            rel_pos = official_relative_position(
                position.num_heads,
                position.head_dim,
                position.init_value,
                position.head_range,
                height,
                width,
                position.mode,
                x.dtype,
            )
            for block in stage.blocks:
                x = official_block(block, x, rel_pos, position.mode)
            out = F.layer_norm(x, norm.normalized_shape, norm.weight, norm.bias, norm.eps)
            outputs.append(out.permute(0, 3, 1, 2).contiguous())
        return tuple(outputs)


def official_decode_head(head, stage_maps) -> torch.Tensor:
    """SegRet's decode head as an MMSegmentation head: MLP per stage on flattened tokens + ZIR, resize, concat, fuse."""
    output_size = stage_maps[0].shape[2:]
    outs = []
    for x, linear, zir in zip(stage_maps, head.linear_projections, head.zero_init_residuals):
        n, _, h, w = x.shape
        tokens = x.flatten(2).transpose(1, 2)  # (n, h*w, c_i)
        projected = F.linear(tokens, linear.weight.flatten(1), linear.bias)
        projected = projected.transpose(1, 2).reshape(n, -1, h, w)
        out = projected + F.conv2d(x, zir.weight, zir.bias)
        outs.append(F.interpolate(out, size=output_size, mode="bilinear", align_corners=False))
    fused = F.conv2d(torch.cat(outs[::-1], dim=1), head.fuse.weight)
    fused = F.relu(head.batch_norm(fused))
    return F.conv2d(head.dropout(fused), head.classifier.weight, head.classifier.bias)


class OfficialSegRet(nn.Module):
    """SegRet in the official formulation on the weights of a `SegRetForSemanticSegmentation`; returns logits."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.backbone = OfficialRMTBackbone(model.segret.encoder)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return official_decode_head(self.model.decode_head, self.backbone(pixel_values))
