# Copyright 2026 The SegRet Authors. Licensed under the Apache License, Version 2.0.
"""Parameter and FLOP counts of SegRet models, in the paper's convention and in full, at any input size.

The paper's FLOPs are MMSegmentation's `tools/get_flops.py`, i.e. mmcv's `get_model_complexity_info`, run on the
official code. mmcv counts *multiply-accumulates* (reported as "FLOPs") with forward hooks chosen by each module's
exact type, which gives this convention:

- `nn.Conv2d`: multiply-accumulates, plus one addition per output element for the bias;
- `nn.Linear`: multiply-accumulates only (the bias is not counted). SegRet's per-stage decoder projections are
  `nn.Linear` layers in the official head; here they are 1×1 convolutions, and are counted as linears;
- `nn.LayerNorm` (affine): 2 per input element;
- `nn.ReLU`: 1 per output element;
- not counted: every batch norm (the official code uses `SyncBatchNorm`, a type mmcv's counter does not know), GELU,
  the retention products Q·Kᵀ and weights·V, softmax, the rotary encoding, interpolation, residual additions,
  layer scale and dropout.

The full count adds what the paper's convention leaves out and costs real compute: the retention products (the
multiply-accumulates of Q·Kᵀ and weights·V, as `torch.utils.flop_counter` counts attention) and the batch norms
(2 per element). Both counts are in multiply-accumulates, so they can be compared with the paper's figures.

Matrix products and convolutions are measured by `torch.utils.flop_counter.FlopCounterMode` (which reports 2 FLOPs
per multiply-accumulate); biases, norms and ReLUs are counted by forward hooks. Models are built on the meta device,
so no weights are allocated and any size, 1024×2048 included, is counted in about a second.

Command line:

    python -m modeling_segret.complexity --variant tiny --size 1024 1024
    python -m modeling_segret.complexity --variant all --size 512 512 --size 1024 1024 --format markdown
    python -m modeling_segret.complexity --config path/to/model_folder --size 512 512 --breakdown
    python -m modeling_segret.complexity --reconcile
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, mm_flop, sdpa_flop_count

from .configuration_segret import SEGRET_VARIANTS, SegRetConfig, segret_variant_config
from .modeling_segret import SegRetDecodeHead, SegRetForSemanticSegmentation

# The paper's figures (its Tables 1-8), for comparison. Parameters and FLOPs are the same for every dataset.
PAPER_PARAMETERS_M = {"tiny": 14.01, "small": 26.52, "base": 53.05, "large": 95.81}
PAPER_DECODER_PARAMETERS_M = {"tiny": 0.814, "small": 0.814, "base": 0.871, "large": 2.607}
PAPER_GFLOPS = {"tiny": 72.28, "small": 117.1, "base": 229.66, "large": 478.54}
PAPER_FLOPS_SIZE = (1024, 1024)
# MMSegmentation's base decode head always builds `conv_seg`, a 1×1 convolution from its `channels` (128 in the
# SegRet configs) to the classes. SegRet's head never calls it, but mmcv's parameter count includes it.
MMSEG_UNUSED_CONV_SEG_CHANNELS = 128

_NORM_TYPES = (nn.LayerNorm, nn.GroupNorm, nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)


def _cpu_flash_attention_flop(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    # The fused CPU kernel is missing from FlopCounterMode's registry; it computes what the other SDPA kernels do.
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _matrix_product_flop(a_shape, b_shape, *args, out_shape=None, **kwargs) -> int:
    # An inner dimension of 1 is an outer product: how SegRet forms its decay masks (`outer_product`), position tables
    # that depend on the input's size only, not the model's computation.
    return 0 if a_shape[-1] == 1 else mm_flop(a_shape, b_shape)


_CUSTOM_FLOP_FORMULAS = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_flash_attention_flop,
    torch.ops.aten.mm: _matrix_product_flop,
}


@dataclass(frozen=True)
class FlopCount:
    """Multiply-accumulates (MACs) of one forward pass, by kind of computation."""

    convolution: int = 0  # kernel MACs + bias additions
    linear: int = 0  # MACs, bias not counted (decoder projections included)
    layer_norm: int = 0  # 2 per element of affine norms (LayerNorm, GroupNorm, InstanceNorm), 1 without affine
    relu: int = 0  # 1 per output element
    batch_norm: int = 0  # 2 per element; not in the paper's convention
    attention: int = 0  # retention products Q·Kᵀ and weights·V; not in the paper's convention

    @property
    def paper(self) -> int:
        """MMSegmentation `get_flops` convention: convolutions, linears, layer norms, ReLUs."""
        return self.convolution + self.linear + self.layer_norm + self.relu

    @property
    def full(self) -> int:
        """The paper's convention plus the retention products and batch norms."""
        return self.paper + self.batch_norm + self.attention

    def __add__(self, other: FlopCount) -> FlopCount:
        return FlopCount(**{f.name: getattr(self, f.name) + getattr(other, f.name) for f in fields(self)})

    def to_dict(self) -> dict[str, int]:
        return {**asdict(self), "paper": self.paper, "full": self.full}


@dataclass(frozen=True)
class ComplexityReport:
    """Parameters and FLOPs of one model at one input size; `parameters` and `flops` have backbone/decoder/total."""

    name: str
    input_size: tuple[int, int]
    num_labels: int
    parameters: dict[str, int]
    flops: dict[str, FlopCount] = field(repr=False)

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "input_size": list(self.input_size),
            "num_labels": self.num_labels,
            "parameters": dict(self.parameters),
            "flops": {part: count.to_dict() for part, count in self.flops.items()},
        }


def _model_parts(model: nn.Module) -> dict[str, nn.Module]:
    if hasattr(model, "decode_head"):
        return {"backbone": model.segret, "decoder": model.decode_head}
    return {"backbone": model}  # SegRetModel / SegRetBackbone


def count_parameters(model: nn.Module) -> dict[str, int]:
    """Parameter counts of the backbone (with its four output norms), the decoder and the whole model."""
    counts = {part: sum(p.numel() for p in module.parameters()) for part, module in _model_parts(model).items()}
    counts.setdefault("decoder", 0)
    counts["total"] = sum(p.numel() for p in model.parameters())
    return counts


def count_flops(model: nn.Module, input_size: Sequence[int], batch_size: int = 1) -> dict[str, FlopCount]:
    """Per-image multiply-accumulates of `model` on (batch_size, C, *input_size) inputs, for backbone/decoder/total.

    The model runs once in eval mode without autograd, on its own device and dtype (the meta device works and costs
    nothing), as written: the decoder's folding (`SegRetDecodeHead.fold`) is switched off for the count, because
    the folded decoder computes the same function with most of its multiply-accumulates removed and is not the
    architecture the paper counts. Every convolution and linear layer must run once; a model that skips one raises
    `RuntimeError`.
    """
    parameter = next(model.parameters())
    height, width = (int(side) for side in input_size)
    pixel_values = torch.zeros(
        batch_size, model.config.num_channels, height, width, device=parameter.device, dtype=parameter.dtype
    )
    parts = _model_parts(model)
    owner = {module: part for part, root in parts.items() for module in root.modules()}
    decode_head = parts.get("decoder")
    # 1×1 convolutions that the official head implements as `nn.Linear` (see the module docstring).
    linear_convolutions = set(getattr(decode_head, "linear_projections", ()))
    counts = {part: dict.fromkeys((f.name for f in fields(FlopCount)), 0) for part in parts}
    part_macs = dict.fromkeys(parts, 0)  # everything FlopCounterMode counts inside a part
    layer_macs = dict.fromkeys(parts, 0)  # ... of which inside its convolutions and linears
    flop_counter = FlopCounterMode(display=False, custom_mapping=_CUSTOM_FLOP_FORMULAS)
    roots = {module: part for part, module in parts.items()}
    starts: dict[nn.Module, int] = {}
    ran: set[nn.Module] = set()

    def before(module: nn.Module, args) -> None:
        starts[module] = flop_counter.get_total_flops()
        ran.add(module)

    def after(module: nn.Module, args, output) -> None:
        if module in starts:
            macs = (flop_counter.get_total_flops() - starts.pop(module)) // (2 * batch_size)
            if module in roots:
                part_macs[roots[module]] += macs
                return
        part = owner[module]
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            layer_macs[part] += macs
            if isinstance(module, nn.Linear) or module in linear_convolutions:
                counts[part]["linear"] += macs
            else:
                bias = output.numel() // batch_size if module.bias is not None else 0
                counts[part]["convolution"] += macs + bias
        elif isinstance(module, _NORM_TYPES):
            affine = getattr(module, "elementwise_affine", False) or getattr(module, "affine", False)
            counts[part]["layer_norm"] += args[0].numel() // batch_size * (2 if affine else 1)
        elif isinstance(module, nn.modules.batchnorm._BatchNorm):
            counts[part]["batch_norm"] += args[0].numel() // batch_size * 2
        elif isinstance(module, nn.ReLU):
            counts[part]["relu"] += output.numel() // batch_size

    handles = []
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)) or module in roots:
            handles.append(module.register_forward_pre_hook(before))
            handles.append(module.register_forward_hook(after))
        elif isinstance(module, (nn.ReLU, nn.modules.batchnorm._BatchNorm, *_NORM_TYPES)):
            handles.append(module.register_forward_hook(after))
    was_training = model.training
    folding = {module: module.fold for module in model.modules() if isinstance(module, SegRetDecodeHead)}
    model.eval()
    try:
        for module in folding:
            module.fold = False
        with torch.no_grad(), flop_counter:
            model(pixel_values)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
        for module, fold in folding.items():
            module.fold = fold
    skipped = [
        name
        for name, module in model.named_modules()
        if isinstance(module, (nn.Conv2d, nn.Linear)) and module not in ran
    ]
    if skipped:
        raise RuntimeError(
            f"{len(skipped)} layers did not run, e.g. {skipped[:4]}: the model did not run as written (a folded or "
            "cached path?), so its FLOPs cannot be counted in the paper's convention."
        )

    flops = {}
    for part, part_counts in counts.items():
        # What FlopCounterMode counted in a part outside its convolutions and linears: the retention products.
        flops[part] = FlopCount(**{**part_counts, "attention": part_macs[part] - layer_macs[part]})
    flops.setdefault("decoder", FlopCount())
    flops["total"] = flops["backbone"] + flops["decoder"]
    return flops


def build_meta_model(config: SegRetConfig) -> SegRetForSemanticSegmentation:
    """`SegRetForSemanticSegmentation(config)` on the meta device (shapes only, no memory), in eval mode."""
    with torch.device("meta"):
        return SegRetForSemanticSegmentation(config).eval()


def variant_name(config: SegRetConfig) -> str | None:
    """The paper variant whose architecture `config` has ("tiny", ...), or None for any other architecture."""
    for variant, values in SEGRET_VARIANTS.items():
        if all(list(getattr(config, key)) == list(value) for key, value in values.items() if isinstance(value, list)):
            if config.decoder_hidden_size == values["decoder_hidden_size"]:
                return variant
    return None


def measure(
    config: SegRetConfig, input_size: Sequence[int] = PAPER_FLOPS_SIZE, name: str | None = None
) -> ComplexityReport:
    """A [`ComplexityReport`] of the model that `config` describes, at `input_size` (height, width).

    Reports are cached per architecture and size (class names do not matter), as a count takes about a second.
    """
    if name is None:
        variant = variant_name(config)
        name = f"SegRet-{variant.capitalize()}" if variant else "SegRet (custom)"
        if not config.ffn_depthwise_conv:
            name += " (no FFN dwconv)"
    architecture = config.to_dict()
    for key in ("id2label", "label2id", "_name_or_path", "transformers_version", "architectures", "auto_map"):
        architecture.pop(key, None)
    architecture["num_labels"] = config.num_labels
    size = (int(input_size[0]), int(input_size[1]))
    return _measure(json.dumps(architecture, sort_keys=True), size, name)


@functools.lru_cache(maxsize=64)
def _measure(architecture: str, input_size: tuple[int, int], name: str) -> ComplexityReport:
    values = json.loads(architecture)
    num_labels = values.pop("num_labels")
    config = SegRetConfig(**values, num_labels=num_labels)
    model = build_meta_model(config)
    return ComplexityReport(
        name=name,
        input_size=input_size,
        num_labels=config.num_labels,
        parameters=count_parameters(model),
        flops=count_flops(model, input_size),
    )


def measure_variant(
    variant: str, input_size: Sequence[int] = PAPER_FLOPS_SIZE, num_labels: int = 150, **overrides
) -> ComplexityReport:
    """A [`ComplexityReport`] of a paper variant with `num_labels` classes (150: ADE20K, as the paper's tables)."""
    return measure(segret_variant_config(variant, num_labels=num_labels, **overrides), input_size)


def _giga(value: int) -> str:
    return f"{value / 1e9:.2f}"


def _mega(value: int) -> str:
    return f"{value / 1e6:.2f}M"


def format_table(reports: Sequence[ComplexityReport], markdown: bool = True, breakdown: bool = False) -> str:
    """A table of parameters (backbone / decoder / total) and GFLOPs (paper convention and full) per report."""
    header = ["Model", "Input", "Classes", "Backbone", "Decoder", "Total params", "GFLOPs (paper)", "GFLOPs (full)"]
    if breakdown:
        header += ["conv", "linear", "norm+ReLU", "batch norm", "attention"]
    rows = []
    for report in reports:
        total = report.flops["total"]
        row = [
            report.name,
            f"{report.input_size[0]}×{report.input_size[1]}",
            str(report.num_labels),
            f"{report.parameters['backbone']:,}",
            f"{report.parameters['decoder']:,}",
            f"{report.parameters['total']:,}",
            _giga(total.paper),
            _giga(total.full),
        ]
        if breakdown:
            row += [
                _giga(total.convolution),
                _giga(total.linear),
                _giga(total.layer_norm + total.relu),
                _giga(total.batch_norm),
                _giga(total.attention),
            ]
        rows.append(row)
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        return "\n".join(lines)
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    return "\n".join("  ".join(cell.rjust(width) for cell, width in zip(row, widths)) for row in [header, *rows])


def parameter_reconciliation(num_labels: int = 150) -> list[dict]:
    """How the paper's parameter counts arise from this implementation's (docs/architecture.md §5), per variant.

    Each row has this implementation's counts, the counts without the FFN depth-wise convolution (the older RMT
    code the paper's Base/Large figures match), the decoder as mmcv's per-module print shows it (without the
    SyncBatchNorm it skips, with MMSegmentation's unused `conv_seg`) and the paper's numbers.
    """
    unused_conv_seg = MMSEG_UNUSED_CONV_SEG_CHANNELS * num_labels + num_labels
    rows = []
    for variant in SEGRET_VARIANTS:
        config = segret_variant_config(variant, num_labels=num_labels)
        ours = count_parameters(build_meta_model(config))
        without_dwconv = count_parameters(
            build_meta_model(segret_variant_config(variant, num_labels=num_labels, ffn_depthwise_conv=False))
        )
        decoder_batch_norm = 2 * config.decoder_hidden_size
        paper_total = round(PAPER_PARAMETERS_M[variant] * 1e6)
        rows.append(
            {
                "variant": variant,
                "backbone": ours["backbone"],
                "decoder": ours["decoder"],
                "total": ours["total"],
                "ffn_depthwise_conv": ours["total"] - without_dwconv["total"],
                "total_without_ffn_depthwise_conv": without_dwconv["total"],
                "unused_conv_seg": unused_conv_seg,
                "mmcv_decoder": ours["decoder"] - decoder_batch_norm + unused_conv_seg,
                "paper_decoder_m": PAPER_DECODER_PARAMETERS_M[variant],
                "mmcv_total_without_ffn_depthwise_conv": without_dwconv["total"] + unused_conv_seg,
                "paper_total_m": PAPER_PARAMETERS_M[variant],
                "unexplained": paper_total - (without_dwconv["total"] + unused_conv_seg),
            }
        )
    return rows


def format_reconciliation(rows: Sequence[dict]) -> str:
    """A Markdown table of [`parameter_reconciliation`]."""
    lines = [
        "| Variant | This model | − FFN dwconv | + unused `conv_seg` | Paper total | Unexplained | "
        "Decoder (ours) | Decoder as mmcv prints it | Paper decoder |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        # The paper rounds to 0.01M: smaller differences are rounding.
        unexplained = f"{row['unexplained'] / 1e6:+.3f}M" if abs(row["unexplained"]) >= 5_000 else "none"
        lines.append(
            f"| {row['variant'].capitalize()} | {row['total']:,} | {row['total_without_ffn_depthwise_conv']:,} | "
            f"{row['mmcv_total_without_ffn_depthwise_conv']:,} | {row['paper_total_m']:.2f}M | "
            f"{unexplained} | {row['decoder']:,} | {row['mmcv_decoder']:,} | "
            f"{row['paper_decoder_m']:.3f}M |"
        )
    return "\n".join(lines)


def _load_config(path: str) -> SegRetConfig:
    path = Path(path)
    if path.is_dir():
        path = path / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"No SegRet config at {path}: pass a model folder or its config.json.")
    values = json.loads(path.read_text())
    if values.get("model_type") != SegRetConfig.model_type:
        raise ValueError(f"{path} has model_type {values.get('model_type')!r}, not {SegRetConfig.model_type!r}.")
    return SegRetConfig.from_pretrained(path.parent)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m modeling_segret.complexity",
        description="Parameters and FLOPs of SegRet models, in the paper's convention (MMSegmentation get_flops) "
        "and in full (with the retention products and batch norms). FLOPs are multiply-accumulates.",
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument(
        "--variant", nargs="+", choices=[*SEGRET_VARIANTS, "all"], help="paper variant(s) (default: all)"
    )
    source.add_argument("--config", help="a model folder or config.json to measure instead of a paper variant")
    parser.add_argument(
        "--size",
        nargs=2,
        type=int,
        action="append",
        metavar=("HEIGHT", "WIDTH"),
        help="input size; repeat for several (default: 1024 1024, the paper's)",
    )
    parser.add_argument("--num_labels", type=int, default=150, help="classes of the paper variants (default: 150)")
    parser.add_argument(
        "--no_ffn_depthwise_conv",
        action="store_true",
        help="paper variants without the FFN depth-wise conv (the RMT version the paper's Base/Large numbers match)",
    )
    parser.add_argument("--format", choices=["text", "markdown", "json"], default="text")
    parser.add_argument("--breakdown", action="store_true", help="add columns per kind of computation")
    parser.add_argument("--reconcile", action="store_true", help="print how the paper's parameter counts arise")
    args = parser.parse_args(argv)

    if args.reconcile:
        rows = parameter_reconciliation(args.num_labels)
        print(json.dumps(rows, indent=2) if args.format == "json" else format_reconciliation(rows))
        return 0
    sizes = [tuple(size) for size in args.size] if args.size else [PAPER_FLOPS_SIZE]
    if any(side <= 0 for size in sizes for side in size):
        parser.error(f"--size must be positive, got {sizes}")
    if args.config:
        config = _load_config(args.config)
        reports = [measure(config, size) for size in sizes]
    else:
        variants = list(SEGRET_VARIANTS) if not args.variant or "all" in args.variant else args.variant
        overrides = {"ffn_depthwise_conv": False} if args.no_ffn_depthwise_conv else {}
        reports = [measure_variant(v, size, args.num_labels, **overrides) for size in sizes for v in variants]
    if args.format == "json":
        print(json.dumps([report.to_dict() for report in reports], indent=2))
    else:
        print(format_table(reports, markdown=args.format == "markdown", breakdown=args.breakdown))
    return 0


if __name__ == "__main__":
    sys.exit(main())
