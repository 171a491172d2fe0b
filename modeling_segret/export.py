# Copyright 2026 The SegRet Authors. Licensed under the Apache License, Version 2.0.
"""Export a SegRet model to ONNX or to a `torch.export` program, then verify the written file against eager PyTorch.

    python -m modeling_segret.export --model DIR_OR_HUB_ID --format onnx --output segret.onnx
    python -m modeling_segret.export --model DIR_OR_HUB_ID --format exported-program --output segret.pt2
    python -m modeling_segret.export --model DIR_OR_HUB_ID --format onnx --output segret.onnx --verify-only

The artefact takes `pixel_values` (batch, channels, height, width) with dynamic batch, height and width, and
returns the logits (batch, num_labels, ceil(height / 4), ceil(width / 4)). After writing it, the command reloads the
file, runs it on sample inputs of several batch sizes and image sizes, prints the largest absolute difference to
the eager model and the agreement of the per-pixel argmax, and exits with status 1 when a difference exceeds the
tolerance or an argmax differs. ONNX needs the optional extra: `pip install -e ".[export]"`.
"""

import argparse
import importlib.util
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .modeling_segret import SegRetForSemanticSegmentation

FORMATS = ("onnx", "exported-program")
ONNX_PACKAGES = ("onnx", "onnxscript", "onnxruntime")
# Largest absolute logit difference to eager PyTorch accepted by the verification (float32).
DEFAULT_TOLERANCE = {"onnx": 1e-4, "exported-program": 1e-5}
DEFAULT_SHAPES = ("1x512x512", "2x480x640", "1x97x131", "3x256x384")
EXAMPLE_SHAPE = (2, 160, 224)  # (batch, height, width) traced at export; every size and batch runs afterwards


class ExportError(Exception):
    """A problem with the command's input (model, paths, packages), reported without a traceback."""


class SegRetLogits(nn.Module):
    """The model with a plain tensor output, `pixel_values -> logits`, the signature of the exported artefact."""

    def __init__(self, model: SegRetForSemanticSegmentation) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values).logits


@dataclass
class SampleResult:
    shape: tuple[int, ...]
    max_abs_difference: float
    argmax_agreement: float
    passed: bool


def parse_shape(text: str) -> tuple[int, int, int]:
    """'BxHxW' -> (batch, height, width)."""
    parts = text.lower().split("x")
    if len(parts) != 3 or not all(part.isdigit() and int(part) > 0 for part in parts):
        raise argparse.ArgumentTypeError(
            f"expected BATCHxHEIGHTxWIDTH with positive integers, e.g. 2x512x512; got {text!r}"
        )
    return tuple(int(part) for part in parts)


def check_onnx_packages() -> None:
    missing = [name for name in ONNX_PACKAGES if importlib.util.find_spec(name) is None]
    if missing:
        raise ExportError(
            f"--format onnx needs the optional packages {', '.join(ONNX_PACKAGES)} (missing: {', '.join(missing)}). "
            "Install them with: pip install -e '.[export]'"
        )


def load_model(model_id: str) -> SegRetForSemanticSegmentation:
    """A local folder or a Hub id holding a SegRet checkpoint (config.json + weights), in eval mode, float32."""
    try:
        model = SegRetForSemanticSegmentation.from_pretrained(model_id)
    except Exception as error:  # from_pretrained raises OSError, ValueError, HTTP errors, ... for a bad id or folder
        raise ExportError(
            f"could not load a SegRet model from {model_id!r}: expected a folder with config.json and the weights "
            f"(model.safetensors), or a Hub model id. Cause: {type(error).__name__}: {error}"
        ) from error
    return model.float().eval()


def dynamic_shapes() -> dict:
    """Batch, height and width are dynamic; the number of channels is fixed by the model."""
    auto = torch.export.Dim.AUTO
    return {"pixel_values": {0: auto, 2: auto, 3: auto}}


def example_input(model: SegRetForSemanticSegmentation) -> torch.Tensor:
    batch_size, height, width = EXAMPLE_SHAPE
    return torch.randn(batch_size, model.config.num_channels, height, width)


def export_model(model: SegRetForSemanticSegmentation, export_format: str, output: Path) -> None:
    """Writes `model` as ONNX (opset of `torch.onnx`'s dynamo exporter) or as a `torch.export.save` .pt2 file."""
    wrapped = SegRetLogits(model).eval()
    example = (example_input(model),)
    with torch.no_grad():
        if export_format == "onnx":
            program = torch.onnx.export(
                wrapped,
                example,
                dynamo=True,
                dynamic_shapes=dynamic_shapes(),
                input_names=["pixel_values"],
                output_names=["logits"],
            )
            program.save(str(output))
        else:
            program = torch.export.export(wrapped, example, dynamic_shapes=dynamic_shapes())
            torch.export.save(program, output)


def load_artefact(path: Path, export_format: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """The written file as a function `pixel_values -> logits`, run by onnxruntime (CPU) or by PyTorch."""
    if export_format == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        input_name = session.get_inputs()[0].name

        def run_onnx(pixel_values: torch.Tensor) -> torch.Tensor:
            return torch.from_numpy(session.run(None, {input_name: pixel_values.numpy()})[0])

        return run_onnx
    program = torch.export.load(path).module()

    def run_program(pixel_values: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return program(pixel_values)

    return run_program


def verify(
    model: SegRetForSemanticSegmentation,
    artefact: Callable[[torch.Tensor], torch.Tensor],
    shapes: Sequence[tuple[int, int, int]],
    tolerance: float,
    seed: int = 0,
) -> list[SampleResult]:
    """Runs the artefact and the eager model on random images of each (batch, height, width)."""
    generator = torch.Generator().manual_seed(seed)
    results = []
    for batch_size, height, width in shapes:
        pixel_values = torch.randn(batch_size, model.config.num_channels, height, width, generator=generator)
        with torch.inference_mode():
            expected = model(pixel_values).logits
        try:
            exported = artefact(pixel_values)
        except Exception as error:  # a program that fails at a size is a failed verification, not a crash
            print(f"  {batch_size}x{height}x{width}: the artefact failed: {type(error).__name__}: {error}")
            results.append(SampleResult((batch_size, height, width), float("inf"), 0.0, False))
            continue
        if exported.shape != expected.shape:
            difference, agreement = float("inf"), 0.0
        else:
            difference = (exported.float() - expected).abs().max().item()
            agreement = (exported.argmax(1) == expected.argmax(1)).float().mean().item()
        passed = difference <= tolerance and agreement == 1.0
        results.append(SampleResult((batch_size, height, width), difference, agreement, passed))
    return results


def format_results(results: Sequence[SampleResult], tolerance: float) -> str:
    lines = [f"| input (batch×height×width) | max abs difference | argmax agreement | within {tolerance:g} |"]
    lines.append("|---|---|---|---|")
    for result in results:
        shape = "×".join(str(size) for size in result.shape)
        lines.append(
            f"| {shape} | {result.max_abs_difference:.2e} | {result.argmax_agreement:.4%} | "
            f"{'yes' if result.passed else 'NO'} |"
        )
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """The command; returns the exit status (0: verified, 1: verification failed)."""
    output = Path(args.output)
    if args.format == "onnx":
        check_onnx_packages()
    if args.verify_only:
        if not output.is_file():
            raise ExportError(f"--verify-only: the artefact {output} does not exist")
    elif not output.parent.is_dir():
        raise ExportError(f"the output folder {output.parent} does not exist (create it first)")
    model = load_model(args.model)
    if not args.verify_only:
        print(f"Exporting {args.model} as {args.format} to {output} ...")
        export_model(model, args.format, output)
    print(f"Verifying {output} against eager PyTorch on {len(args.shapes)} inputs ...")
    try:
        artefact = load_artefact(output, args.format)
    except Exception as error:
        print(f"FAILED: {output} could not be loaded as {args.format}: {type(error).__name__}: {error}")
        return 1
    tolerance = args.tolerance if args.tolerance is not None else DEFAULT_TOLERANCE[args.format]
    results = verify(model, artefact, args.shapes, tolerance)
    print(format_results(results, tolerance))
    failed = [result for result in results if not result.passed]
    if failed:
        worst = max(result.max_abs_difference for result in failed)
        print(
            f"FAILED: {len(failed)} of {len(results)} inputs differ from eager PyTorch (largest absolute logit "
            f"difference {worst:.2e}, tolerance {tolerance:g}, or an argmax differs); {output} does not compute the "
            "model's function."
        )
        return 1
    print(f"OK: {output} matches eager PyTorch within {tolerance:g} on every input.")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m modeling_segret.export",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model", required=True, help="local folder or Hub id of a SegRet checkpoint")
    parser.add_argument("--format", required=True, choices=FORMATS, help="onnx or exported-program (.pt2)")
    parser.add_argument("--output", required=True, help="file to write (its folder must exist)")
    parser.add_argument(
        "--verify-only", action="store_true", help="do not export: verify an existing artefact against the model"
    )
    parser.add_argument(
        "--shapes",
        nargs="+",
        type=parse_shape,
        default=[parse_shape(shape) for shape in DEFAULT_SHAPES],
        metavar="BxHxW",
        help=f"sample inputs of the verification (default: {' '.join(DEFAULT_SHAPES)})",
    )
    parser.add_argument(
        "--tolerance",
        type=float,
        help=f"largest absolute logit difference accepted (default: {DEFAULT_TOLERANCE['onnx']:g} for onnx, "
        f"{DEFAULT_TOLERANCE['exported-program']:g} for exported-program)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except ExportError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
