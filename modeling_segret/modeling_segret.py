# Copyright 2026 The SegRet Authors. Licensed under the Apache License, Version 2.0.
"""PyTorch SegRet: an RMT (Vision RetNet) backbone with SegRet's lightweight residual decoder.

Papers: "SegRet: An Efficient Design for Semantic Segmentation with Retentive Network" and "RMT: Retentive Networks
Meet Vision Transformers" (https://arxiv.org/abs/2309.11523). Inside the backbone's stages tensors are channels-last,
(batch, height, width, channels); feature maps leave the backbone channels-first, (batch, channels, height, width).
"""

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init
from transformers.backbone_utils import BackboneMixin
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BackboneOutput, BaseModelOutputWithNoAttention, SemanticSegmenterOutput
from transformers.modeling_utils import PreTrainedModel
from transformers.utils.generic import can_return_tuple

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
        return hidden_states * keep_mask / keep_prob

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}"


class SegRetDepthwiseConv(nn.Conv2d):
    """Depth-wise k×k convolution (with bias, "same" padding) applied to a channels-last tensor."""

    def __init__(self, channels: int, kernel_size: int) -> None:
        super().__init__(channels, channels, kernel_size, padding=kernel_size // 2, groups=channels)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        # (B, H, W, C) -> (B, C, H, W) is a view with channels-last strides, which the convolution keeps.
        return super().forward(hidden_states.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


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
        hidden_states = pixel_values
        for layer in self.layers:
            hidden_states = layer(hidden_states)
        return hidden_states.permute(0, 2, 3, 1)  # (B, C, H/4, W/4) -> (B, H/4, W/4, C)


def rotate_every_two(hidden_states: torch.Tensor) -> torch.Tensor:
    """Maps each channel pair (x_2i, x_2i+1) to (-x_2i+1, x_2i)."""
    even, odd = hidden_states.unflatten(-1, (-1, 2)).unbind(-1)
    return torch.stack((-odd, even), dim=-1).flatten(-2)


def apply_rotary_position(hidden_states: torch.Tensor, sin: torch.Tensor, cos: torch.Tensor) -> torch.Tensor:
    return hidden_states * cos + rotate_every_two(hidden_states) * sin


class SegRetRelativePosition(nn.Module):
    """Rotary angles and Manhattan-distance decay masks of one stage, derived from the config alone.

    Head n decays with gamma_n = 1 - 2 ** (-init_value - head_range * n / num_heads); the mask adds
    distance * log(gamma_n) to the retention scores. Token (r, c) is rotated by angle (r * width + c) * theta: RMT
    rotates by the raster index, not by a 2-D position. The base tables are computed in float32 as the official
    code (and its checkpoints) did; products are formed in float64 for float64 models and in float32 otherwise,
    then cast to the compute dtype, so bfloat16 models do not lose the angles' precision.
    """

    def __init__(self, head_dim: int, num_heads: int, init_value: float, head_range: float, mode: str) -> None:
        super().__init__()
        self.head_dim = head_dim
        self.num_heads = num_heads
        self.init_value = init_value
        self.head_range = head_range
        self.mode = mode

    def base_tables(self, device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The official `angle` (head_dim,) and `decay` (num_heads,) tables, in float32."""
        theta = 1.0 / (10000 ** torch.linspace(0, 1, self.head_dim // 2, device=device))
        angle = theta.unsqueeze(-1).repeat(1, 2).flatten()  # (theta_0, theta_0, theta_1, theta_1, ...)
        head_index = torch.arange(self.num_heads, dtype=torch.float32, device=device)
        decay = torch.log(1 - 2 ** (-self.init_value - self.head_range * head_index / self.num_heads))
        return angle, decay

    def forward(
        self, height: int, width: int, dtype: torch.dtype, device: torch.device
    ) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, ...]]:
        table_dtype = torch.float64 if dtype == torch.float64 else torch.float32
        angle, decay = (table.to(table_dtype) for table in self.base_tables(device))

        raster_index = torch.arange(height * width, dtype=table_dtype, device=device)
        phase = (raster_index[:, None] * angle[None, :]).reshape(height, width, 1, self.head_dim)
        rotation = (phase.sin().to(dtype), phase.cos().to(dtype))  # each (H, W, 1, head_dim)

        if self.mode == "global":
            rows = torch.arange(height, dtype=table_dtype, device=device).repeat_interleave(width)
            cols = torch.arange(width, dtype=table_dtype, device=device).repeat(height)
            distance = (rows[:, None] - rows[None, :]).abs() + (cols[:, None] - cols[None, :]).abs()
            decay_masks = ((distance * decay[:, None, None]).to(dtype),)  # (num_heads, H*W, H*W)
        else:
            decay_masks = tuple(
                (self._distance_1d(length, table_dtype, device) * decay[:, None, None]).to(dtype)
                for length in (height, width)
            )  # (num_heads, H, H) and (num_heads, W, W)
        return rotation, decay_masks

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
    the output. Both modes run through `scaled_dot_product_attention` on 4-D tensors (the fused CPU/GPU kernels).
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

    def forward(
        self,
        hidden_states: torch.Tensor,
        rotation: tuple[torch.Tensor, torch.Tensor],
        decay_masks: tuple[torch.Tensor, ...],
    ) -> torch.Tensor:
        batch_size, height, width, hidden_size = hidden_states.shape
        heads_shape = (batch_size, height, width, self.num_heads, self.head_dim)
        sin, cos = rotation

        value = self.v_proj(hidden_states)
        local_enhancement = self.lepe(value)
        # Keys are scaled before the (linear) rotation, as in RMT; the attention call then uses scale 1.
        query = apply_rotary_position(self.q_proj(hidden_states).view(heads_shape), sin, cos)
        key = apply_rotary_position((self.k_proj(hidden_states) * self.scaling).view(heads_shape), sin, cos)
        value = value.view(heads_shape)

        if self.mode == "global":
            (decay_mask,) = decay_masks

            def to_sequence(states: torch.Tensor) -> torch.Tensor:  # (B, H, W, N, d) -> (B, N, H*W, d)
                return states.reshape(batch_size, height * width, self.num_heads, self.head_dim).transpose(1, 2)

            output = F.scaled_dot_product_attention(
                to_sequence(query), to_sequence(key), to_sequence(value), attn_mask=decay_mask, scale=1.0
            )
            output = output.transpose(1, 2).reshape(batch_size, height, width, hidden_size)
        else:
            height_mask, width_mask = decay_masks

            def to_rows(states: torch.Tensor) -> torch.Tensor:  # (B, H, W, N, d) -> (B*H, N, W, d)
                return states.transpose(2, 3).reshape(batch_size * height, self.num_heads, width, self.head_dim)

            def to_columns(states: torch.Tensor) -> torch.Tensor:  # (B, H, W, N, d) -> (B*W, N, H, d)
                return states.permute(0, 2, 3, 1, 4).reshape(batch_size * width, self.num_heads, height, self.head_dim)

            along_rows = F.scaled_dot_product_attention(
                to_rows(query), to_rows(key), to_rows(value), attn_mask=width_mask, scale=1.0
            )
            # (B*H, N, W, d) -> (B, H, W, N, d), the values of the column pass
            along_rows = along_rows.view(batch_size, height, self.num_heads, width, self.head_dim).transpose(2, 3)
            output = F.scaled_dot_product_attention(
                to_columns(query), to_columns(key), to_columns(along_rows), attn_mask=height_mask, scale=1.0
            )
            # (B*W, N, H, d) -> (B, H, W, N*d)
            output = output.view(batch_size, width, self.num_heads, height, self.head_dim).permute(0, 3, 1, 2, 4)
            output = output.reshape(batch_size, height, width, hidden_size)

        return self.out_proj(output + local_enhancement)


class SegRetFeedForward(nn.Module):
    """fc1 → GELU → (+ depth-wise 3×3 conv, residual) → fc2."""

    def __init__(self, hidden_size: int, intermediate_size: int, depthwise_conv: bool) -> None:
        super().__init__()
        self.fc1 = nn.Linear(hidden_size, intermediate_size)
        self.activation = nn.GELU()
        self.dwconv = SegRetDepthwiseConv(intermediate_size, kernel_size=3) if depthwise_conv else None
        self.fc2 = nn.Linear(intermediate_size, hidden_size)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        hidden_states = self.activation(self.fc1(hidden_states))
        if self.dwconv is not None:
            hidden_states = hidden_states + self.dwconv(hidden_states)
        return self.fc2(hidden_states)


class SegRetLayer(GradientCheckpointingLayer):
    """RetBlock: conditional position encoding, then retention and FFN residual branches (pre-norm)."""

    def __init__(self, config: SegRetConfig, stage_index: int, drop_path: float) -> None:
        super().__init__()
        hidden_size = config.embed_dims[stage_index]
        self.position_encoding = SegRetDepthwiseConv(hidden_size, kernel_size=3)
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
        self,
        hidden_states: torch.Tensor,
        rotation: tuple[torch.Tensor, torch.Tensor],
        decay_masks: tuple[torch.Tensor, ...],
    ) -> torch.Tensor:
        hidden_states = hidden_states + self.position_encoding(hidden_states)
        retention_output = self.retention(self.retention_norm(hidden_states), rotation, decay_masks)
        if self.retention_layer_scale is not None:
            retention_output = self.retention_layer_scale * retention_output
        hidden_states = hidden_states + self.drop_path(retention_output)
        ffn_output = self.ffn(self.ffn_norm(hidden_states))
        if self.ffn_layer_scale is not None:
            ffn_output = self.ffn_layer_scale * ffn_output
        return hidden_states + self.drop_path(ffn_output)


class SegRetStage(nn.Module):
    """One backbone stage: a stride-2 Conv3×3+BN downsampling (all but the first stage), then RetBlocks."""

    def __init__(self, config: SegRetConfig, stage_index: int, drop_path_rates: Sequence[float]) -> None:
        super().__init__()
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

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if self.downsample is not None:
            hidden_states = self.downsample(hidden_states.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        _, height, width, _ = hidden_states.shape
        rotation, decay_masks = self.relative_position(height, width, hidden_states.dtype, hidden_states.device)
        for block in self.blocks:
            hidden_states = block(hidden_states, rotation, decay_masks)
        return hidden_states


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

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Returns the stem output and the normalised output of every stage, each (B, C, H, W)."""
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

        hidden_states = self.embeddings(pixel_values)
        feature_maps = [hidden_states.permute(0, 3, 1, 2)]
        for stage, output_norm in zip(self.stages, self.output_norms):
            hidden_states = stage(hidden_states)
            feature_maps.append(output_norm(hidden_states).permute(0, 3, 1, 2))
        return tuple(feature_maps)


class SegRetZeroInitConv(nn.Conv2d):
    """1×1 convolution whose weight and bias start at zero (SegRet's ZIR branch)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(in_channels, out_channels, kernel_size=1)


class SegRetDecodeHead(nn.Module):
    """SegRet's lightweight residual decoder.

    Each stage map F_i goes to C channels through a per-pixel linear map plus a zero-initialised 1×1 convolution
    (ZIR, the residual that starts as a no-op), is upsampled to stride 4, and the four are concatenated as
    [F4, F3, F2, F1] and fused by Conv1×1 (4C→C, no bias) + BatchNorm + ReLU, then Dropout2d and a 1×1 classifier.
    """

    def __init__(self, config: SegRetConfig) -> None:
        super().__init__()
        hidden_size = config.decoder_hidden_size
        # Per-pixel linear maps, written as 1×1 convolutions so the maps stay channels-first.
        self.linear_projections = nn.ModuleList(nn.Conv2d(dim, hidden_size, 1) for dim in config.embed_dims)
        self.zero_init_residuals = nn.ModuleList(SegRetZeroInitConv(dim, hidden_size) for dim in config.embed_dims)
        self.fuse = nn.Conv2d(hidden_size * config.num_stages, hidden_size, 1, bias=False)
        self.batch_norm = nn.BatchNorm2d(hidden_size)
        self.activation = nn.ReLU()
        self.dropout = nn.Dropout2d(config.decoder_dropout)
        self.classifier = nn.Conv2d(hidden_size, config.num_labels, 1)

    def forward(self, stage_maps: Sequence[torch.Tensor]) -> torch.Tensor:
        """(B, c_i, H/2^(i+1), W/2^(i+1)) for i = 1..4 -> logits (B, num_labels, H/4, W/4)."""
        output_size = stage_maps[0].shape[2:]
        decoded = []
        for stage_map, projection, residual in zip(stage_maps, self.linear_projections, self.zero_init_residuals):
            stage_decoded = projection(stage_map) + residual(stage_map)
            if stage_decoded.shape[2:] != output_size:
                stage_decoded = F.interpolate(stage_decoded, size=output_size, mode="bilinear", align_corners=False)
            decoded.append(stage_decoded)
        fused = self.activation(self.batch_norm(self.fuse(torch.cat(decoded[::-1], dim=1))))
        return self.classifier(self.dropout(fused))


class SegRetPreTrainedModel(PreTrainedModel):
    config: SegRetConfig
    base_model_prefix = "segret"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    supports_gradient_checkpointing = True
    _no_split_modules = ["SegRetStage"]

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


class SegRetModel(SegRetPreTrainedModel):
    """The bare RMT backbone; `last_hidden_state` is the normalised last stage map (B, C4, H/32, W/32)."""

    def __init__(self, config: SegRetConfig) -> None:
        super().__init__(config)
        self.encoder = SegRetEncoder(config)
        self.post_init()

    @can_return_tuple
    def forward(
        self, pixel_values: torch.Tensor, output_hidden_states: bool | None = None, **kwargs
    ) -> BaseModelOutputWithNoAttention:
        r"""
        pixel_values (`torch.FloatTensor` of shape `(batch_size, num_channels, height, width)`):
            Normalised images, e.g. from [`SegRetImageProcessor`]. Any height and width.
        output_hidden_states (`bool`, *optional*):
            Also return `hidden_states`: the stem output and the four normalised stage maps (strides 4, 4, 8, 16, 32).
        """
        if output_hidden_states is None:
            output_hidden_states = self.config.output_hidden_states
        feature_maps = self.encoder(pixel_values)
        return BaseModelOutputWithNoAttention(
            last_hidden_state=feature_maps[-1], hidden_states=feature_maps if output_hidden_states else None
        )


class SegRetBackbone(BackboneMixin, SegRetPreTrainedModel):
    """RMT backbone for other frameworks (e.g. UperNet): returns the maps of `config.out_features`."""

    has_attentions = False

    def __init__(self, config: SegRetConfig) -> None:
        super().__init__(config)
        self.encoder = SegRetEncoder(config)
        self.num_features = [config.embed_dims[0]] + list(config.embed_dims)
        self.post_init()

    @can_return_tuple
    def forward(self, pixel_values: torch.Tensor, output_hidden_states: bool | None = None, **kwargs) -> BackboneOutput:
        r"""
        pixel_values (`torch.FloatTensor` of shape `(batch_size, num_channels, height, width)`):
            Normalised images.
        output_hidden_states (`bool`, *optional*):
            Also return all five maps of `stage_names` as `hidden_states`.
        """
        if output_hidden_states is None:
            output_hidden_states = self.config.output_hidden_states
        all_maps = self.encoder(pixel_values)
        return BackboneOutput(
            feature_maps=tuple(all_maps[index] for index in self.out_indices),
            hidden_states=all_maps if output_hidden_states else None,
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

        Example:
        ```python
        >>> import torch
        >>> from modeling_segret import SegRetConfig, SegRetForSemanticSegmentation
        >>> model = SegRetForSemanticSegmentation(SegRetConfig(num_labels=150)).eval()
        >>> model(torch.randn(1, 3, 512, 512)).logits.shape
        torch.Size([1, 150, 128, 128])
        ```"""
        if output_hidden_states is None:
            output_hidden_states = self.config.output_hidden_states
        outputs = self.segret(pixel_values, output_hidden_states=True, return_dict=True)
        logits = self.decode_head(outputs.hidden_states[1:])
        loss = self.compute_loss(logits, labels) if labels is not None else None
        return SemanticSegmenterOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states if output_hidden_states else None
        )

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
        upsampled_logits = F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=False)
        summed_loss = F.cross_entropy(upsampled_logits, labels.long(), ignore_index=ignore_index, reduction="sum")
        if self.config.loss_average_over_all_pixels:
            normalizer = labels.numel()
        else:
            normalizer = labelled.sum().clamp(min=1)
        return summed_loss / normalizer


__all__ = [
    "SegRetPreTrainedModel",
    "SegRetModel",
    "SegRetBackbone",
    "SegRetForSemanticSegmentation",
]
