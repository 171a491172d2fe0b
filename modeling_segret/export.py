# Copyright 2026 The SegRet Authors. Licensed under the Apache License, Version 2.0.
"""Export a SegRet model to ONNX, OpenVINO or a `torch.export` program, then verify the written file against eager
PyTorch.

    python -m modeling_segret.export --model DIR_OR_HUB_ID --format onnx --output segret.onnx
    python -m modeling_segret.export --model DIR_OR_HUB_ID --format onnx --quantize dynamic --output segret-int8.onnx
    python -m modeling_segret.export --model DIR_OR_HUB_ID --format openvino --output segret.xml
    python -m modeling_segret.export --model DIR_OR_HUB_ID --format exported-program --output segret.pt2
    python -m modeling_segret.export --model DIR_OR_HUB_ID --format onnx --output segret.onnx --verify_only

The artefact takes `pixel_values` (batch, channels, height, width) with dynamic batch, height and width, and
returns the logits (batch, num_labels, ceil(height / 4), ceil(width / 4)). After writing it, the command reloads the
file, runs it on sample inputs of several batch sizes and image sizes, prints the largest absolute difference to
the eager model and the agreement of the per-pixel argmax, and exits with status 1 when a difference exceeds the
tolerance or the argmax agreement falls below its minimum (100 % in float32). ONNX needs the optional extra
`pip install -e ".[export]"`, OpenVINO the extra `".[openvino]"`.

The ONNX graph is written at opset 23, where retention is one `Attention` operator per call, and with every
weight-only computation folded into constants by onnxruntime's basic (hardware-independent) graph optimisation: the
depth-wise convolutions' identity taps and the folded decoder become plain initializers, which quantisers need.
"""

import argparse
import importlib.util
import math
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .modeling_segret import SegRetForSemanticSegmentation

FORMATS = ("onnx", "openvino", "exported-program")
ONNX_PACKAGES = ("onnx", "onnxscript", "onnxruntime")
OPENVINO_PACKAGES = ("openvino",)
# Opset 23 has the `Attention` operator (softmax(Q K^T * scale + mask) V in one node), which onnxruntime (>= 1.23)
# and OpenVINO run as one fused kernel instead of MatMul, Add, Softmax and MatMul over materialised scores.
ONNX_OPSET = 23
# Largest absolute logit difference to eager PyTorch accepted by the verification (float32 artefacts).
DEFAULT_TOLERANCE = {"onnx": 1e-4, "openvino": 1e-4, "exported-program": 1e-5}
# Smallest per-pixel argmax agreement with eager PyTorch accepted for reduced precision (no logit tolerance there):
# float16 weights change a near-tie now and then, int8 quantisation shifts logits by a few percent.
DEFAULT_MIN_AGREEMENT = {"float32": 1.0, "float16": 0.99, "int8": 0.95}
DEFAULT_SHAPES = ("1x512x512", "2x480x640", "1x97x131", "3x256x384")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
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


def check_packages(export_format: str) -> None:
    """The optional packages a format needs (none for exported-program), with the extra that installs them."""
    packages, extra = {
        "onnx": (ONNX_PACKAGES, "export"),
        "openvino": (ONNX_PACKAGES + OPENVINO_PACKAGES, "openvino"),
    }.get(export_format, ((), ""))
    missing = [name for name in packages if importlib.util.find_spec(name) is None]
    if missing:
        raise ExportError(
            f"--format {export_format} needs the optional packages {', '.join(packages)} (missing: "
            f"{', '.join(missing)}). Install them with: pip install -e '.[{extra}]'"
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


def export_onnx(model: SegRetForSemanticSegmentation, output: Path) -> None:
    """Writes `model` as ONNX (opset 23, dynamic batch, height and width) with its weight-only subgraphs folded."""
    import onnxruntime

    with tempfile.TemporaryDirectory() as folder:
        traced = Path(folder) / "traced.onnx"
        with torch.no_grad():
            program = torch.onnx.export(
                SegRetLogits(model).eval(),
                (example_input(model),),
                dynamo=True,
                opset_version=ONNX_OPSET,
                dynamic_shapes=dynamic_shapes(),
                input_names=["pixel_values"],
                output_names=["logits"],
            )
        program.save(str(traced))
        # onnxruntime's basic level only folds constants and fuses within standard ONNX operators, so the written
        # graph stays portable (the extended and layout levels would tie it to onnxruntime and this CPU).
        options = onnxruntime.SessionOptions()
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_BASIC
        options.optimized_model_filepath = str(output)
        onnxruntime.InferenceSession(str(traced), options, providers=["CPUExecutionProvider"])


def calibration_inputs(model_id: str, images: Path | None, num_channels: int) -> list[torch.Tensor]:
    """Pixel values that static quantisation calibrates its activation ranges on: the images of a folder through the
    model's image processor, or (without a folder, for a smoke test only) random normalised images."""
    if images is None:
        print("warning: calibrating on random inputs; pass --calibration_images with typical photos for a real model")
        generator = torch.Generator().manual_seed(0)
        return [torch.randn(1, num_channels, 512, 512, generator=generator) for _ in range(8)]
    from PIL import Image

    from .image_processing_segret import SegRetImageProcessor

    try:
        processor = SegRetImageProcessor.from_pretrained(model_id)
    except OSError:  # a checkpoint without preprocessor_config.json: the default (ImageNet statistics, short side 512)
        processor = SegRetImageProcessor()
    paths = sorted(path for path in images.rglob("*") if path.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise ExportError(f"--calibration_images {images}: no image files ({', '.join(IMAGE_SUFFIXES)}) found")
    return [processor(Image.open(path), return_tensors="pt")["pixel_values"] for path in paths]


def quantize_onnx(source: Path, output: Path, mode: str, calibration: Sequence[torch.Tensor]) -> None:
    """onnxruntime's int8 quantisation with its default settings: dynamic (weights int8, activations quantised at run
    time) or static (QDQ, activation ranges calibrated on `calibration`)."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, quantize_dynamic, quantize_static

    graph = onnx.load(str(source)).graph
    # The rotation's pair swaps are MatMuls with a constant 0/1 permutation matrix: no learned weight, and exact in
    # float32, so they stay float (quantising them would only add rounding and per-call quantisation work).
    permutations = {
        tensor.name
        for tensor in graph.initializer
        if len(tensor.dims) == 2
        and tensor.dims[0] == tensor.dims[1]
        and is_permutation(onnx.numpy_helper.to_array(tensor))
    }
    pair_swaps = [node.name for node in graph.node if node.op_type == "MatMul" and node.input[1] in permutations]
    if mode == "dynamic":
        # onnxruntime's dynamic quantiser (up to 1.32 at least) takes ONNX's own `Attention` (opset 23) for its
        # contrib `Attention` of the same name and writes a `QAttention` node that does not load; those nodes stay
        # float (they have no weights to quantise anyway). Every other setting is the default.
        attention_nodes = [node.name for node in graph.node if node.op_type == "Attention"]
        quantize_dynamic(str(source), str(output), nodes_to_exclude=attention_nodes + pair_swaps)
        return

    class Calibration(CalibrationDataReader):
        def __init__(self) -> None:
            self.inputs = iter({"pixel_values": pixel_values.numpy()} for pixel_values in calibration)

        def get_next(self) -> dict | None:
            return next(self.inputs, None)

    quantize_static(str(source), str(output), Calibration(), nodes_to_exclude=pair_swaps)


def is_permutation(matrix) -> bool:
    """Whether a square array is a permutation matrix (0/1, one 1 per row and per column)."""
    binary = ((matrix == 0) | (matrix == 1)).all()
    return bool(binary and (matrix.sum(axis=0) == 1).all() and (matrix.sum(axis=1) == 1).all())


def convert_onnx_to_float16(source: Path, output: Path) -> None:
    """float16 weights and compute, float32 input and output (onnxruntime's converter keeps the graph's I/O types)."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    onnx.save(convert_float_to_float16(onnx.load(str(source)), keep_io_types=True), str(output))


def export_model(
    model: SegRetForSemanticSegmentation,
    export_format: str,
    output: Path,
    precision: str = "float32",
    quantize: str | None = None,
    calibration: Sequence[torch.Tensor] = (),
) -> None:
    """Writes `model` as ONNX, OpenVINO IR (.xml + .bin) or a `torch.export.save` .pt2 file.

    ONNX can be written in float16 or quantised to int8 (`quantize`: "dynamic" or "static"); OpenVINO IR in float16
    stores float16 weights (OpenVINO's CPU plugin still computes in float32, or bfloat16 where the CPU has it).
    """
    if export_format == "exported-program":
        with torch.no_grad():
            program = torch.export.export(
                SegRetLogits(model).eval(), (example_input(model),), dynamic_shapes=dynamic_shapes()
            )
        torch.export.save(program, output)
        return
    with tempfile.TemporaryDirectory() as folder:
        onnx_file = (
            output if export_format == "onnx" and precision == "float32" and not quantize else Path(folder) / "m.onnx"
        )
        export_onnx(model, onnx_file)
        if export_format == "openvino":
            import openvino

            openvino.save_model(
                openvino.convert_model(str(onnx_file)), str(output), compress_to_fp16=precision == "float16"
            )
        elif quantize:
            quantize_onnx(onnx_file, output, quantize, calibration)
        elif precision == "float16":
            convert_onnx_to_float16(onnx_file, output)


def load_artefact(path: Path, export_format: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """The written file as a function `pixel_values -> logits`, run by onnxruntime or OpenVINO (CPU) or by PyTorch."""
    if export_format == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        input_name = session.get_inputs()[0].name

        def run_onnx(pixel_values: torch.Tensor) -> torch.Tensor:
            return torch.from_numpy(session.run(None, {input_name: pixel_values.numpy()})[0])

        return run_onnx
    if export_format == "openvino":
        import openvino

        # float32 arithmetic: OpenVINO's CPU plugin otherwise computes in bfloat16 where the CPU has it (AMX, AVX-512
        # BF16), which is faster but not the model's float32 function (about 1e-2 on the logits).
        compiled = openvino.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})

        def run_openvino(pixel_values: torch.Tensor) -> torch.Tensor:
            return torch.from_numpy(compiled(pixel_values.numpy())[0].copy())

        return run_openvino
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
    min_agreement: float = 1.0,
    seed: int = 0,
) -> list[SampleResult]:
    """Runs the artefact and the eager model on random images of each (batch, height, width); a sample passes when
    the largest absolute logit difference is within `tolerance` and the argmax agreement at least `min_agreement`."""
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
        passed = difference <= tolerance and agreement >= min_agreement
        results.append(SampleResult((batch_size, height, width), difference, agreement, passed))
    return results


def format_results(results: Sequence[SampleResult], tolerance: float, min_agreement: float = 1.0) -> str:
    criterion = f"within {tolerance:g}" if math.isfinite(tolerance) else "passed"
    if min_agreement < 1.0:
        criterion += f", agreement ≥ {min_agreement:.0%}"
    lines = [f"| input (batch×height×width) | max abs difference | argmax agreement | {criterion} |"]
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
    check_packages(args.format)
    if args.precision == "float16" and args.format == "exported-program":
        raise ExportError("--precision float16 applies to --format onnx and openvino (the .pt2 program stays float32)")
    if args.quantize and args.format != "onnx":
        raise ExportError("--quantize applies to --format onnx (onnxruntime's int8 quantisation)")
    if args.quantize and args.precision == "float16":
        raise ExportError(
            "--quantize and --precision float16 exclude each other: int8 quantisation starts from float32"
        )
    if args.calibration_images is not None and args.quantize != "static":
        raise ExportError("--calibration_images is for --quantize static")
    if args.calibration_images is not None and not args.calibration_images.is_dir():
        raise ExportError(f"--calibration_images {args.calibration_images} is not a folder")
    if args.verify_only:
        if not output.is_file():
            raise ExportError(f"--verify_only: the artefact {output} does not exist")
    elif not output.parent.is_dir():
        raise ExportError(f"the output folder {output.parent} does not exist (create it first)")
    model = load_model(args.model)
    if not args.verify_only:
        calibration = ()
        if args.quantize == "static":
            calibration = calibration_inputs(args.model, args.calibration_images, model.config.num_channels)
        variant = f"int8 ({args.quantize})" if args.quantize else args.precision
        print(f"Exporting {args.model} as {args.format}, {variant}, to {output} ...")
        export_model(model, args.format, output, args.precision, args.quantize, calibration)
    print(f"Verifying {output} against eager PyTorch on {len(args.shapes)} inputs ...")
    try:
        artefact = load_artefact(output, args.format)
    except Exception as error:
        print(f"FAILED: {output} could not be loaded as {args.format}: {type(error).__name__}: {error}")
        return 1
    numeric = "int8" if args.quantize else args.precision
    # Reduced precision is judged by its argmax agreement only, unless a tolerance is given.
    default_tolerance = DEFAULT_TOLERANCE[args.format] if numeric == "float32" else math.inf
    tolerance = args.tolerance if args.tolerance is not None else default_tolerance
    min_agreement = args.min_agreement if args.min_agreement is not None else DEFAULT_MIN_AGREEMENT[numeric]
    results = verify(model, artefact, args.shapes, tolerance, min_agreement)
    print(format_results(results, tolerance, min_agreement))
    failed = [result for result in results if not result.passed]
    if failed:
        worst = max(result.max_abs_difference for result in failed)
        print(
            f"FAILED: {len(failed)} of {len(results)} inputs differ from eager PyTorch (largest absolute logit "
            f"difference {worst:.2e}, tolerance {tolerance:g}, or an argmax agreement below {min_agreement:.2%}); "
            f"{output} does not compute the model's function."
        )
        return 1
    print(
        f"OK: {output} matches eager PyTorch (tolerance {tolerance:g}, argmax agreement ≥ {min_agreement:.2%}) on "
        "every input."
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m modeling_segret.export",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model", required=True, help="local folder or Hub id of a SegRet checkpoint")
    parser.add_argument(
        "--format", required=True, choices=FORMATS, help="onnx, openvino (IR .xml + .bin) or exported-program (.pt2)"
    )
    parser.add_argument("--output", required=True, help="file to write (its folder must exist)")
    parser.add_argument(
        "--precision",
        choices=("float32", "float16"),
        default="float32",
        help="float16: onnx with float16 weights and compute (float32 input/output), openvino with float16 weights",
    )
    parser.add_argument(
        "--quantize",
        choices=("dynamic", "static"),
        help="onnx only: onnxruntime int8 quantisation, dynamic (no data needed) or static (calibrated)",
    )
    parser.add_argument(
        "--calibration_images",
        type=Path,
        help="--quantize static: a folder of typical images (default: random inputs, only for a smoke test)",
    )
    parser.add_argument(
        "--verify_only", action="store_true", help="do not export: verify an existing artefact against the model"
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
        help=f"largest absolute logit difference accepted (default: {DEFAULT_TOLERANCE['onnx']:g} for onnx and "
        f"openvino, {DEFAULT_TOLERANCE['exported-program']:g} for exported-program, unchecked for float16 and int8)",
    )
    parser.add_argument(
        "--min_agreement",
        type=float,
        help="smallest per-pixel argmax agreement accepted, 0-1 (default: 1 in float32, "
        f"{DEFAULT_MIN_AGREEMENT['float16']:g} in float16, {DEFAULT_MIN_AGREEMENT['int8']:g} for int8)",
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
