"""SegRet speed and memory benchmarks: `python benchmarks/run.py --device cpu|cuda [--parts ...]`.

Every comparison is timed as interleaved rounds in one fresh process per part (each round runs every contender
once, the order rotating), so a load change on a shared machine hits all contenders alike; the table reports median
times and the median of the per-round time ratios. Results go to stdout and to this suite's section of
BENCHMARKS.md.

CPU parts (batch 1, 512×512, float32, random weights, `torch.inference_mode`, unless stated):
  model     SegRet-Tiny vs transformers' SegFormer-B1 (model-heap: the same with glibc's mmap threshold raised)
  official  SegRet-Tiny vs the same weights in the official formulation
  backbone  RMT-T backbone vs the same weights in the official formulation (backbone-heap: threshold raised)
  variants  SegRet-Small/Base/Large vs their official formulation
  levers    SegRet-Tiny with one speed lever undone at a time
  compile   SegRet-Tiny eager vs `torch.compile` (inductor): inference, and a training step at batch 2
  onnx      onnxruntime (CPU) vs eager PyTorch, SegRet-Tiny and SegFormer-B1 (needs the `export` extra)
  deploy    (only when named) SegRet-Tiny and SegFormer-B1 in eager PyTorch, onnxruntime (float32, int8 dynamic and
            static), OpenVINO (float32 and its default precision; the `openvino` extra) and torch.compile, at 512² and
            1024×2048, all interleaved per size; its own BENCHMARKS.md section
  global-stage  SegRet-Tiny vs SegFormer-B1 at 1024×2048 (Tiny's quadratic global stage 3 at 8192 tokens)
  train     one training step (forward + backward), batch 2: SegRet-Tiny vs SegFormer-B1
  memory    whole-image 1024×2048 inference, peak resident memory of a fresh process per model
  pipeline  time per image of the image-segmentation pipeline (SegRet's class for SegRet-Tiny, transformers' for
            SegFormer-B1), 512², 640×480 and 1024×2048 photos, random heads and 10 winning classes; post-processing
            alone before / now
  postprocess-memory  peak memory of post-processing one 3000×2000 photo with 150 classes, before / now
  data      (only when named) decode + augmentation of generated 512×683 JPEG/PNG photos (ADE20K settings) on one
            core: TrainTransform vs the same steps written directly with OpenCV, images/s vs MMSegmentation's 41 ms;
            the training DataLoader at 0, 1 and 2 persistent workers; its own BENCHMARKS.md section
  highres   (only when named) the four variants vs SegFormer-B1/B2/B3 matched by parameters at 512², 1024²,
            1024×2048 and 2048²: time and peak memory; its own BENCHMARKS.md section (also in the GPU suite)
GPU parts (`--device cuda`, bfloat16, batch 16): throughput of the four variants and SegFormer-B1, the backbone vs
the official formulation, a training step, peak GPU memory.

Multiply-adds (MACs) are counted with `torch.utils.flop_counter` on each contender itself (convolutions, linear
layers and attention products; the fused attention kernels included), so a folded decoder counts fewer. Their
rate is compared with a float32 (CPU) or bfloat16 (GPU) matrix product timed in the same rounds.
"""

import argparse
import copy
import dataclasses
import datetime
import functools
import json
import math
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import transformers
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count
from transformers import SegformerConfig, SegformerForSemanticSegmentation
from transformers.modeling_outputs import SemanticSegmenterOutput

from modeling_segret import SegRetForSemanticSegmentation, segret_variant_config

if __package__:  # python -m benchmarks.run, or imported by the tests
    from .official_rmt import OfficialRMTBackbone, OfficialSegRet
else:  # python benchmarks/run.py: this folder is first on sys.path
    from official_rmt import OfficialRMTBackbone, OfficialSegRet

REPOSITORY = Path(__file__).resolve().parent.parent

GPU_PARTS = ("throughput", "backbone", "train")
VARIANTS = ("tiny", "small", "base", "large")
NUM_LABELS = 150
# (m, k, n) of the reference matrix product timed in every round: large enough to reach the device's peak
MATMUL_SIZES = {"cpu": (2048, 2048, 4096), "cuda": (8192, 8192, 8192)}


# (encoder depths, decoder width) of the released SegFormer configs (nvidia/mit-b1..b3 and their ADE20K fine-tunes);
# all three have hidden sizes [64, 128, 320, 512]. 150 classes: B1 13.7M, B2 27.5M, B3 47.3M parameters.
SEGFORMER_SIZES = {"B1": ([2, 2, 2, 2], 256), "B2": ([3, 4, 6, 3], 768), "B3": ([3, 4, 18, 3], 768)}


def segformer(size: str) -> SegformerForSemanticSegmentation:
    """transformers' SegFormer-B1/B2/B3 (random weights)."""
    depths, decoder_hidden_size = SEGFORMER_SIZES[size]
    config = SegformerConfig(
        hidden_sizes=[64, 128, 320, 512], depths=depths, decoder_hidden_size=decoder_hidden_size, num_labels=NUM_LABELS
    )
    return SegformerForSemanticSegmentation(config)


def segformer_b1() -> SegformerForSemanticSegmentation:
    """transformers' SegFormer-B1 (random weights), the comparison model of the issue: 13.7M parameters."""
    return segformer("B1")


def segret(variant: str) -> SegRetForSemanticSegmentation:
    return SegRetForSemanticSegmentation(segret_variant_config(variant, num_labels=NUM_LABELS))


def randomize_decoder_residuals(model: SegRetForSemanticSegmentation) -> None:
    """Trained-like ZIR weights and BatchNorm statistics, so that folding them is really exercised (not zeros/ones)."""
    generator = torch.Generator().manual_seed(0)
    head = model.decode_head
    with torch.no_grad():
        for residual in head.zero_init_residuals:
            residual.weight.copy_(0.02 * torch.randn(residual.weight.shape, generator=generator))
            residual.bias.copy_(0.02 * torch.randn(residual.bias.shape, generator=generator))
        head.batch_norm.running_mean.copy_(0.1 * torch.randn(head.batch_norm.running_mean.shape, generator=generator))
        head.batch_norm.running_var.uniform_(0.5, 2.0, generator=generator)


def predict_a_handful_of_classes(model: torch.nn.Module, pixel_values: torch.Tensor, count: int = 10) -> None:
    """Shifts the classifier's bias (`model.decode_head.classifier`) so that only `count` classes can win, as with a
    trained model on one photo. transformers' pipeline returns one mask per class present, so with random weights the
    number of classes predicted (anywhere from a few to all 150, differing between models) would weigh in the time.
    The bias costs nothing to compute: the network's work is unchanged."""
    with torch.inference_mode():
        logits = model(pixel_values).logits
    margin = 4 * float(logits.max() - logits.min())  # larger than any spread of the logits
    classifier = model.decode_head.classifier
    with torch.no_grad():  # the same bias for the `count` classes: the image decides between them
        classifier.bias[:count] = margin
        classifier.bias[count:] = -margin


# ----------------------------------------------------------------------------------------------------------------
# Timing and counting


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Contender:
    name: str
    run: Callable[[], object]
    macs: float | None = None  # multiply-adds of one call
    note: str = ""


@dataclass
class Row:
    group: str
    name: str
    median_ms: float
    ratio: float | None = None
    reference: str = ""
    target: str = ""
    met: bool | None = None
    macs: float | None = None
    mac_rate: float | None = None
    peak_fraction: float | None = None
    memory: str = ""
    note: str = ""
    extra: dict = field(default_factory=dict)


def interleaved(contenders: list[Contender], rounds: int, warmup: int, device: torch.device) -> dict[str, list]:
    """Seconds per call of each contender, `rounds` times, each round running every contender once."""
    names = [contender.name for contender in contenders]
    for _ in range(warmup):
        for contender in contenders:
            contender.run()
    synchronize(device)
    times = {name: [] for name in names}
    for round_index in range(rounds):
        shift = round_index % len(contenders)
        for contender in contenders[shift:] + contenders[:shift]:
            synchronize(device)
            start = time.perf_counter()
            contender.run()
            synchronize(device)
            times[contender.name].append(time.perf_counter() - start)
    return times


def cpu_flash_attention_flops(query, key, value, *args, out_val=None, **kwargs) -> int:
    """FlopCounterMode has no formula for the CPU's fused attention kernel: the same count as the GPU kernels."""
    return sdpa_flop_count(query.shape, key.shape, value.shape)


def convolution_backward_flops(grad_output, input, weight, *args, out_val=None) -> int:
    """One forward convolution's FLOPs per requested gradient (input, weight). FlopCounterMode's own formula
    counts a grouped convolution's input gradient as a dense one (258× too much for a depth-wise 3×3 of 256)."""
    transposed, output_mask = args[4], args[-1]
    if transposed:
        raise NotImplementedError("transposed convolutions are not used by the benchmarked models")
    forward = 2 * grad_output.shape[0] * math.prod(grad_output.shape[2:]) * weight.numel()
    return forward * (int(output_mask[0]) + int(output_mask[1]))


# FlopCounterMode calls these with the tensors themselves, not with their shapes.
cpu_flash_attention_flops._get_raw = True
convolution_backward_flops._get_raw = True
FLOP_FORMULAS = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: cpu_flash_attention_flops,
    torch.ops.aten.convolution_backward: convolution_backward_flops,
}


def count_macs(function: Callable[[], object]) -> float:
    """Multiply-adds of one call: half the FLOPs that `FlopCounterMode` counts (matmuls, convolutions, attention)."""
    with FlopCounterMode(display=False, custom_mapping=FLOP_FORMULAS) as counter:
        function()
    return counter.get_total_flops() / 2


def matmul_contender(device: torch.device, dtype: torch.dtype) -> Contender:
    m, k, n = MATMUL_SIZES[device.type]
    left = torch.randn(m, k, device=device, dtype=dtype)
    right = torch.randn(k, n, device=device, dtype=dtype)
    return Contender(
        f"matmul {m}×{k}×{n}, {str(dtype).removeprefix('torch.')} (peak reference)",
        lambda: left @ right,
        macs=m * k * n,
    )


def timed_rows(
    group: str,
    contenders: list[Contender],
    reference: str,
    rounds: int,
    warmup: int,
    device: torch.device,
    matmul: Contender,
) -> list[Row]:
    """Runs the contenders and a reference matrix product interleaved; one row per contender."""
    load_before = os.getloadavg()[0]
    times = interleaved(contenders + [matmul], rounds, warmup, device)
    load = (load_before, os.getloadavg()[0])
    peak_rates = [matmul.macs / seconds for seconds in times[matmul.name]]
    rows = []
    for contender in contenders:
        own = times[contender.name]
        row = Row(group, contender.name, 1e3 * statistics.median(own), note=contender.note)
        if contender.name != reference:
            ratios = [a / b for a, b in zip(own, times[reference])]
            row.ratio = statistics.median(ratios)
            row.reference = reference
            row.extra["ratio range"] = (min(ratios), max(ratios))
        if contender.macs:
            row.macs = contender.macs
            row.mac_rate = contender.macs / statistics.median(own)
            row.peak_fraction = statistics.median(contender.macs / s / peak for s, peak in zip(own, peak_rates))
        rows.append(row)
    matmul_row = Row(group, matmul.name, 1e3 * statistics.median(times[matmul.name]), macs=matmul.macs)
    matmul_row.mac_rate = statistics.median(peak_rates)
    matmul_row.peak_fraction = 1.0
    for row in rows + [matmul_row]:
        row.extra["load"] = load
    return rows + [matmul_row]


def relative_difference(value: torch.Tensor, reference: torch.Tensor) -> float:
    return ((value.float() - reference.float()).abs().max() / reference.float().abs().max()).item()


# ----------------------------------------------------------------------------------------------------------------
# CPU parts


def inference(model: torch.nn.Module, pixel_values: torch.Tensor) -> Callable[[], object]:
    def run():
        with torch.inference_mode():
            return model(pixel_values)

    return run


def part_model(args, matmul) -> list[Row]:
    """SegRet-Tiny vs SegFormer-B1, alone in their process (other contenders would change the allocator's state)."""
    pixel_values = torch.randn(1, 3, args.image_size, args.image_size)
    model = segret("tiny").eval()
    randomize_decoder_residuals(model)
    segformer = segformer_b1().eval()
    with torch.inference_mode():
        folded_logits = model(pixel_values).logits
        model.decode_head.fold = False
        unfolded_logits = model(pixel_values).logits
        model.decode_head.fold = True
    difference = f"logits vs the unfolded decoder: {relative_difference(folded_logits, unfolded_logits):.1e} relative"
    segformer_parameters = sum(p.numel() for p in segformer.parameters()) / 1e6
    contenders = [
        Contender("SegRet-Tiny", inference(model, pixel_values), note=difference),
        Contender("SegFormer-B1", inference(segformer, pixel_values), note=f"{segformer_parameters:.2f}M parameters"),
    ]
    for contender in contenders:
        contender.macs = count_macs(contender.run)
    group = f"inference {args.image_size}², batch 1"
    rows = timed_rows(group, contenders, "SegFormer-B1", args.rounds, 1, args.device, matmul)
    rows[0].target, rows[0].met = "≤ 0.7", rows[0].ratio <= 0.7  # issue 22: median of ≥ 10 interleaved rounds
    return rows


def part_official(args, matmul) -> list[Row]:
    """SegRet-Tiny vs the same weights in the official formulation (backbone and unfolded decoder)."""
    pixel_values = torch.randn(1, 3, args.image_size, args.image_size)
    model = segret("tiny").eval()
    randomize_decoder_residuals(model)
    official = OfficialSegRet(model).eval()
    with torch.inference_mode():
        difference = relative_difference(model(pixel_values).logits, official(pixel_values))
    contenders = [
        Contender("SegRet-Tiny, official formulation", inference(official, pixel_values)),
        Contender("SegRet-Tiny", inference(model, pixel_values), note=f"logits vs official: {difference:.1e} relative"),
    ]
    for contender in contenders:
        contender.macs = count_macs(contender.run)
    group = f"SegRet-Tiny {args.image_size}², batch 1"
    rows = timed_rows(group, contenders, contenders[0].name, args.rounds, 1, args.device, matmul)
    rows[1].extra["speed-up"] = 1 / rows[1].ratio
    return rows


def part_backbone(args, matmul) -> list[Row]:
    dtype, batch_size = args.dtype, args.batch_size
    pixel_values = torch.randn(batch_size, 3, args.image_size, args.image_size, device=args.device, dtype=dtype)
    model = segret("tiny").to(args.device, dtype).eval()
    encoder = model.segret.encoder
    official = OfficialRMTBackbone(encoder)
    with torch.inference_mode():
        fused_maps = encoder(pixel_values)[1:]
        official_maps = official(pixel_values)
    difference = max(relative_difference(a, b) for a, b in zip(fused_maps, official_maps))
    contenders = [
        Contender("RMT-T backbone, official formulation", inference(official, pixel_values)),
        Contender("RMT-T backbone", inference(encoder, pixel_values), note=f"stage maps vs official: {difference:.1e}"),
    ]
    for contender in contenders:
        contender.macs = count_macs(contender.run)
    group = f"backbone {args.image_size}², batch {batch_size}, {str(dtype).removeprefix('torch.')}"
    rows = timed_rows(group, contenders, contenders[0].name, args.rounds, 1, args.device, matmul)
    fused_row = rows[1]
    fused_row.extra["speed-up"] = 1 / fused_row.ratio
    fused_row.target, fused_row.met = "≥ 2.5× faster", 1 / fused_row.ratio >= 2.5
    return rows


def part_variants(args, matmul) -> list[Row]:
    pixel_values = torch.randn(1, 3, args.image_size, args.image_size)
    rows = []
    for variant in VARIANTS[1:]:
        model = segret(variant).eval()
        official = OfficialSegRet(model).eval()
        name = f"SegRet-{variant.capitalize()}"
        contenders = [
            Contender(f"{name}, official formulation", inference(official, pixel_values)),
            Contender(name, inference(model, pixel_values)),
        ]
        for contender in contenders:
            contender.macs = count_macs(contender.run)
        rounds = max(2, args.rounds // 2) if variant != "small" else args.rounds
        group = f"{name} {args.image_size}², batch 1"
        rows += timed_rows(group, contenders, contenders[0].name, rounds, 1, args.device, matmul)
    return rows


def undo_three_dimensional_masks(model) -> None:
    """(N, q, k) attention masks in the decomposed stages: `scaled_dot_product_attention` then takes its unfused CPU
    path. (The global stages' mask differs per query row, which a 3-D mask cannot express.)"""
    for stage in model.segret.encoder.stages:
        position = stage.relative_position
        if position.mode != "decomposed":
            continue

        def tables(*args, position=position, **kwargs):
            tables = type(position).forward(position, *args, **kwargs)
            return tables._replace(decay_masks=tuple(mask[0] for mask in tables.decay_masks))

        position.forward = tables


def undo_complex_rotation(model) -> None:
    """The form that compilers and exporters trace (rotary encoding in real arithmetic, dense global decay mask) in
    eager mode too."""
    forward = model.forward

    def real_rotation_forward(*args, **kwargs):
        is_exporting = torch.compiler.is_exporting
        torch.compiler.is_exporting = lambda: True
        try:
            return forward(*args, **kwargs)
        finally:
            torch.compiler.is_exporting = is_exporting

    model.forward = real_rotation_forward


def undo_decoder_folding(model) -> None:
    model.decode_head.fold = False


def undo_channels_last_stem(model) -> None:
    embeddings = model.segret.encoder.embeddings

    def channels_first(pixel_values):
        hidden_states = pixel_values
        for layer in embeddings.layers:
            hidden_states = layer(hidden_states)
        return hidden_states.permute(0, 2, 3, 1)

    embeddings.forward = channels_first


LEVERS = {
    "3-D attention masks (unfused SDPA path)": undo_three_dimensional_masks,
    "traced-graph form in eager (real rotation, dense global mask)": undo_complex_rotation,
    "decoder unfolded": undo_decoder_folding,
    "channels-first stem": undo_channels_last_stem,
}


def part_levers(args, matmul) -> list[Row]:
    """SegRet-Tiny with one lever undone at a time, each on its own copy of the model."""
    pixel_values = torch.randn(1, 3, args.image_size, args.image_size)
    model = segret("tiny").eval()
    randomize_decoder_residuals(model)
    contenders = [Contender("SegRet-Tiny (all levers)", inference(model, pixel_values))]
    for name, undo in LEVERS.items():
        variant = copy.deepcopy(model)
        undo(variant)
        contenders.append(Contender(f"undone: {name}", inference(variant, pixel_values)))

    def no_grad():
        with torch.no_grad():
            return model(pixel_values)

    contenders.append(Contender("undone: torch.no_grad instead of torch.inference_mode", no_grad))
    group = f"levers, SegRet-Tiny {args.image_size}²"
    return timed_rows(group, contenders, contenders[0].name, args.rounds, 1, args.device, matmul)


def part_compile(args, matmul) -> list[Row]:
    """SegRet-Tiny eager vs `torch.compile` (inductor): inference at batch 1 (with freezing), a training step at 2."""
    pixel_values = torch.randn(1, 3, args.image_size, args.image_size)
    model = segret("tiny").eval()
    randomize_decoder_residuals(model)
    run_compiled, compile_seconds = compiled_runner(model, pixel_values)
    with torch.inference_mode():
        difference = relative_difference(run_compiled().logits, model(pixel_values).logits)
    contenders = [
        Contender("SegRet-Tiny eager", inference(model, pixel_values)),
        Contender(
            "SegRet-Tiny torch.compile",
            run_compiled,
            note=f"compiled in {compile_seconds:.0f} s ({compile_setting()}); logits vs eager: {difference:.1e} "
            "relative",
        ),
    ]
    group = f"torch.compile inference, {args.image_size}², batch 1"
    rows = timed_rows(group, contenders, contenders[0].name, args.rounds, 1, args.device, matmul)
    rows[1].extra["speed-up"] = 1 / rows[1].ratio
    rows[1].target, rows[1].met = "≥ 1.3× faster", 1 / rows[1].ratio >= 1.3

    batch_size = 2
    train_pixels = torch.randn(batch_size, 3, args.image_size, args.image_size)
    labels = torch.randint(0, NUM_LABELS, (batch_size, args.image_size, args.image_size))
    train_model = segret("tiny").train()
    compiled_train = torch.compile(copy.deepcopy(train_model), dynamic=False, options=TRAINING_COMPILE_OPTIONS)
    start = time.perf_counter()
    training_step(compiled_train, train_pixels, labels)()
    compile_seconds = time.perf_counter() - start
    contenders = [
        Contender("SegRet-Tiny eager", training_step(train_model, train_pixels, labels)),
        Contender(
            "SegRet-Tiny torch.compile",
            training_step(compiled_train, train_pixels, labels),
            note=f"compiled in {compile_seconds:.0f} s (dynamic=False, layout_optimization=False)",
        ),
    ]
    group = f"torch.compile training step, {args.image_size}², batch {batch_size}"
    train_rows = timed_rows(group, contenders, contenders[0].name, max(2, args.rounds // 2), 1, args.device, matmul)
    train_rows[1].extra["speed-up"] = 1 / train_rows[1].ratio
    train_rows[1].target, train_rows[1].met = "not slower than eager", train_rows[1].ratio <= 1
    return rows + train_rows


def onnx_session(model: torch.nn.Module, pixel_values: torch.Tensor, path: Path, threads: int):
    """Exports `model` (logits only) with the dynamo ONNX exporter and opens it in onnxruntime on the CPU."""
    import onnxruntime

    class Logits(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, pixel_values):
            return self.inner(pixel_values).logits

    with torch.no_grad():
        torch.onnx.export(Logits(model).eval(), (pixel_values,), dynamo=True).save(str(path))
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    inputs = {session.get_inputs()[0].name: pixel_values.numpy()}
    return lambda: session.run(None, inputs)[0]


def part_onnx(args, matmul) -> list[Row]:
    """onnxruntime (CPU, default graph optimisations) vs eager PyTorch, for SegRet-Tiny and SegFormer-B1."""
    import tempfile

    pixel_values = torch.randn(1, 3, args.image_size, args.image_size)
    segret_model = segret("tiny").eval()
    randomize_decoder_residuals(segret_model)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for name, model in [("SegRet-Tiny", segret_model), ("SegFormer-B1", segformer_b1().eval())]:
            run_onnx = onnx_session(model, pixel_values, Path(folder) / f"{name}.onnx", args.threads)
            with torch.inference_mode():
                expected = model(pixel_values).logits
            difference = (torch.from_numpy(run_onnx()) - expected).abs().max().item()
            contenders = [
                Contender(f"{name} eager PyTorch", inference(model, pixel_values)),
                Contender(f"{name} onnxruntime", run_onnx, note=f"max abs difference to eager {difference:.1e}"),
            ]
            group = f"onnxruntime vs eager, {args.image_size}², batch 1"
            rows += timed_rows(group, contenders, contenders[0].name, args.rounds, 1, args.device, matmul)
    return rows


DEPLOY_SIZES = ((512, 512), (1024, 2048))
DEPLOY_QUICK_SIZES = ((128, 128), (128, 256))


def onnxruntime_runner(path: Path, pixel_values: torch.Tensor, threads: int) -> Callable[[], object]:
    """An onnxruntime CPU session with its default (all) graph optimisations, as a deployment opens it."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    inputs = {session.get_inputs()[0].name: pixel_values.numpy()}
    return lambda: session.run(None, inputs)[0]


def openvino_runner(path: Path, pixel_values: torch.Tensor, threads: int, precision: str) -> Callable[[], object]:
    """OpenVINO's CPU plugin on the same ONNX file, in float32 or in its default precision (bfloat16 on CPUs with
    AMX or AVX-512 BF16, as this one)."""
    import openvino

    config = {"INFERENCE_NUM_THREADS": threads}
    if precision == "f32":
        config["INFERENCE_PRECISION_HINT"] = "f32"
    compiled = openvino.Core().compile_model(str(path), "CPU", config)
    inputs = pixel_values.numpy()
    return lambda: compiled(inputs)[0]


# Inductor settings for CPU inference (docs/deployment.md): freezing folds and pre-packs the weights (PyTorch's
# recommendation); without layout optimisation inductor keeps the strides the model chose (channels-last
# convolutions, strided attention inputs) instead of converting convolutions and copying around them, which made
# compiled SegRet-Tiny 0.88x its eager time instead of 1.07-1.08x (three runs each, this machine).
INFERENCE_COMPILE_OPTIONS = {"freezing": True, "layout_optimization": False}
# For training the same without freezing (parameters change). With layout optimisation inductor also stores the dense
# global decay mask channels-last and copies it back, once per attention call (eight 32 MiB copies per step at 512²):
# the compiled training step took 1.15-1.23x the eager step with it, 1.04-1.14x without (two runs of 9 interleaved
# rounds, this machine).
TRAINING_COMPILE_OPTIONS = {"layout_optimization": False}


def compiled_runner(model: torch.nn.Module, pixel_values: torch.Tensor) -> tuple[Callable[[], object], float]:
    """`torch.compile(model, dynamic=False, options=INFERENCE_COMPILE_OPTIONS)`, compiled by a first call; returns
    the runner and the compile seconds."""
    compiled = torch.compile(model, dynamic=False, options=INFERENCE_COMPILE_OPTIONS)
    start = time.perf_counter()
    inference(compiled, pixel_values)()
    return inference(compiled, pixel_values), time.perf_counter() - start


def compile_setting() -> str:
    return ", ".join(["dynamic=False"] + [f"{key}={value}" for key, value in INFERENCE_COMPILE_OPTIONS.items()])


def argmax_agreement(logits, reference: torch.Tensor) -> float:
    logits = torch.as_tensor(getattr(logits, "logits", logits)).float()  # a model output, a tensor or an array
    return (logits.argmax(1) == reference.argmax(1)).float().mean().item()


def part_deploy(args, matmul) -> list[Row]:
    """SegRet-Tiny and SegFormer-B1 in each runtime a deployment uses (eager PyTorch, onnxruntime, OpenVINO,
    torch.compile) at 512² and 1024×2048, all interleaved per size; at 512² also onnxruntime's int8 quantisations.
    Both models go through the same ONNX export (`modeling_segret.export.export_onnx`: opset 23, dynamic batch,
    height and width, weight-only subgraphs folded)."""
    import importlib.util
    import tempfile

    from modeling_segret.export import DEFAULT_MIN_AGREEMENT, export_onnx, quantize_onnx

    has_openvino = importlib.util.find_spec("openvino") is not None
    segret_model = segret("tiny").eval()
    randomize_decoder_residuals(segret_model)
    models = {"SegRet-Tiny": segret_model, "SegFormer-B1": segformer_b1().eval()}
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        onnx_files = {}
        for name, model in models.items():
            onnx_files[name] = Path(folder) / f"{name}.onnx"
            export_onnx(model, onnx_files[name])
        for height, width in DEPLOY_QUICK_SIZES if args.quick else args.deploy_sizes:
            small = height * width <= 512 * 512
            pixel_values = torch.randn(1, 3, height, width)
            contenders, references, agreements = [], {}, {}
            for name, model in models.items():
                with torch.inference_mode():
                    references[name] = model(pixel_values).logits
                runners = {"eager PyTorch": (inference(model, pixel_values), "")}
                runners["onnxruntime"] = (onnxruntime_runner(onnx_files[name], pixel_values, args.threads), "")
                if small:
                    for mode in ("dynamic", "static"):
                        quantized = Path(folder) / f"{name}-{mode}.onnx"
                        if not quantized.exists():
                            calibration = [torch.randn(1, 3, 512, 512) for _ in range(4)]
                            quantize_onnx(onnx_files[name], quantized, mode, calibration)
                        runner = onnxruntime_runner(quantized, pixel_values, args.threads)
                        runners[f"onnxruntime int8 {mode}"] = (runner, "random calibration" if mode == "static" else "")
                if has_openvino:
                    runners["OpenVINO f32"] = (openvino_runner(onnx_files[name], pixel_values, args.threads, "f32"), "")
                    if small:
                        runner = openvino_runner(onnx_files[name], pixel_values, args.threads, "default")
                        runners["OpenVINO default (bf16)"] = (runner, "")
                runner, seconds = compiled_runner(model, pixel_values)
                runners["torch.compile"] = (runner, f"compiled in {seconds:.0f} s ({compile_setting()})")
                for runtime, (run, note) in runners.items():
                    agreement = argmax_agreement(run(), references[name])
                    agreements[f"{name} {runtime}"] = agreement
                    note = "; ".join(filter(None, [note, f"argmax agreement with eager {agreement:.2%}"]))
                    contenders.append(Contender(f"{name} {runtime}", run, note=note))
            rounds = args.rounds if small else max(2, args.rounds // 4)
            group = f"deploy {height}×{width}, batch 1"
            load_before = os.getloadavg()[0]
            times = interleaved(contenders + [matmul], rounds, 1, args.device)
            load = (load_before, os.getloadavg()[0])
            for contender in contenders:
                model_name, runtime = contender.name.split(" ", 1)
                row = Row(group, contender.name, 1e3 * statistics.median(times[contender.name]), note=contender.note)
                row.extra["load"] = load
                peer = f"SegFormer-B1 {runtime}"
                if model_name == "SegRet-Tiny" and peer in times:
                    ratios = [a / b for a, b in zip(times[contender.name], times[peer])]
                    row.ratio, row.reference = statistics.median(ratios), peer
                    row.extra["ratio range"] = (min(ratios), max(ratios))
                    if small:
                        row.target, row.met = "≤ 0.8", row.ratio <= 0.8
                own_eager = times[f"{model_name} eager PyTorch"]
                if runtime != "eager PyTorch":
                    row.extra["× own eager"] = statistics.median(
                        a / b for a, b in zip(times[contender.name], own_eager)
                    )
                    row.note += f"; {row.extra['× own eager']:.2f}× its eager time"
                if runtime.startswith("onnxruntime int8"):
                    row.extra["agreement"] = agreements[contender.name]
                    minimum = DEFAULT_MIN_AGREEMENT["int8"]
                    if model_name == "SegRet-Tiny":
                        row.note += f" (export command's minimum {minimum:.0%})"
                if runtime == "torch.compile" and model_name == "SegRet-Tiny":
                    speed_up = 1 / row.extra["× own eager"]
                    row.note += f"; target ≥ 1.3× faster than eager: {'met' if speed_up >= 1.3 else 'missed'}"
                rows.append(row)
            matmul_row = Row(group, matmul.name, 1e3 * statistics.median(times[matmul.name]))
            matmul_row.extra["load"] = load
            rows.append(matmul_row)
            print(f"[deploy {group}]\n{format_table(rows)}", file=sys.stderr)
    return rows


def part_global_stage(args, matmul) -> list[Row]:
    """SegRet-Tiny vs SegFormer-B1 at the Cityscapes test size, 1024×2048, batch 1 (Tiny's global stage 3 attends
    over 8192 tokens)."""
    height, width = (128, 256) if args.quick else (1024, 2048)
    pixel_values = torch.randn(1, 3, height, width)
    model = segret("tiny").eval()
    randomize_decoder_residuals(model)
    contenders = [
        Contender("SegRet-Tiny", inference(model, pixel_values)),
        Contender("SegFormer-B1", inference(segformer_b1().eval(), pixel_values)),
    ]
    group = f"inference {height}×{width}, batch 1"
    rounds = args.rounds if args.quick else max(2, args.rounds // 3)
    rows = timed_rows(group, contenders, "SegFormer-B1", rounds, 1, args.device, matmul)
    rows[0].target, rows[0].met = "≤ 1.0", rows[0].ratio <= 1.0
    return rows


def training_step(model, pixel_values, labels, autocast_dtype=None) -> Callable[[], object]:
    def run():
        model.zero_grad(set_to_none=True)
        with torch.autocast(pixel_values.device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            loss = model(pixel_values, labels=labels).loss
        loss.backward()

    return run


def part_train(args, matmul) -> list[Row]:
    batch_size = 2 if args.suite == "cpu" else args.batch_size
    autocast_dtype = None if args.dtype == torch.float32 else args.dtype
    size = args.image_size
    pixel_values = torch.randn(batch_size, 3, size, size, device=args.device)
    labels = torch.randint(0, NUM_LABELS, (batch_size, size, size), device=args.device)
    segret_model = segret("tiny").to(args.device).train()
    segformer = segformer_b1().to(args.device).train()
    as_written = copy.deepcopy(segret_model)
    undo_decoder_folding(as_written)
    contenders = [
        Contender("SegRet-Tiny", training_step(segret_model, pixel_values, labels, autocast_dtype)),
        Contender("SegFormer-B1", training_step(segformer, pixel_values, labels, autocast_dtype)),
        Contender(
            "SegRet-Tiny, decoder as written",
            training_step(as_written, pixel_values, labels, autocast_dtype),
            note="`decode_head.fold = False`: the 4C-channel concatenation and fuse convolution at stride 4",
        ),
    ]
    for contender in contenders:
        contender.macs = count_macs(contender.run)
    precision = "float32" if autocast_dtype is None else f"autocast {str(autocast_dtype).removeprefix('torch.')}"
    group = f"training step (forward + backward), batch {batch_size}, {size}², {precision}"
    rows = timed_rows(group, contenders, "SegFormer-B1", args.rounds, 1, args.device, matmul)
    rows[0].target, rows[0].met = "≤ 1", rows[0].ratio <= 1
    return rows


MEMORY_MODELS = {
    "SegRet-Tiny": lambda: segret("tiny"),
    "SegFormer-B1": segformer_b1,
}


def resident_memory_gib() -> tuple[float, float]:
    """(current, peak) resident memory of this process. VmHWM is reset by exec, unlike ru_maxrss, which would
    report the parent's peak in a freshly started child process."""
    status = Path("/proc/self/status").read_text()
    current, peak = (int(re.search(rf"{key}:\s+(\d+) kB", status).group(1)) / 2**20 for key in ("VmRSS", "VmHWM"))
    return current, peak


def memory_child(name: str, height: int, width: int) -> None:
    """Runs in a fresh process: one whole-image forward; prints resident memory (GiB) and time as JSON."""
    torch.manual_seed(0)
    model = {**MEMORY_MODELS, **HIGHRES_MODELS}[name]().eval()
    pixel_values = torch.randn(1, 3, height, width)
    before, _ = resident_memory_gib()
    start = time.perf_counter()
    with torch.inference_mode():
        model(pixel_values)
    seconds = time.perf_counter() - start
    _, peak = resident_memory_gib()
    print(json.dumps({"before": before, "peak": peak, "seconds": seconds}))


def fresh_process_report(child_flag: str, name: str, height: int, width: int, threads: int) -> dict:
    """Runs `run.py --<child_flag> name --size height width` in a fresh process; its JSON report (GiB, seconds)."""
    command = [sys.executable, __file__, child_flag, name, "--size", str(height), str(width)]
    command += ["--threads", str(threads)]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{child_flag} {name} {height}×{width} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def part_memory(args, matmul) -> list[Row]:
    height, width = (256, 512) if args.quick else (1024, 2048)
    rows = []
    for name in MEMORY_MODELS:
        report = fresh_process_report("--memory_child", name, height, width, args.threads)
        row = Row(f"whole image {height}×{width}, batch 1", name, 1e3 * report["seconds"])
        row.memory = (
            f"{report['peak']:.2f} GiB peak RSS (+{report['peak'] - report['before']:.2f} over the loaded model)"
        )
        row.note = "one call in a fresh process"
        if name == "SegRet-Tiny":
            row.target, row.met = "≤ 2 GB", report["peak"] * 2**30 <= 2e9
        rows.append(row)
    return rows


# ----------------------------------------------------------------------------------------------------------------
# Data part: the training augmentation and DataLoader, per CPU core (issue 19)

# MMSegmentation 1.2.2's whole train pipeline (decoding included) on a 512×683 ADE20K photo, measured earlier on this
# machine class (2-core Xeon): 41 ms per image. mmseg is not installed here; its figure is the target.
MMSEG_PIPELINE_MS = 41.0
ADE20K_PHOTO = (512, 683)
DATA_IMAGES = 24


def write_ade20k_like_photos(root: Path, count: int) -> None:
    """`count` JPEG photos of ADE20K's typical size with PNG label maps (150 classes + 0 'other'), in the folder
    layout of ADE20K (images/training, annotations/training): smooth regions, edges and sensor-like noise."""
    from PIL import Image

    rng = np.random.default_rng(0)
    height, width = ADE20K_PHOTO
    (root / "images" / "training").mkdir(parents=True, exist_ok=True)
    (root / "annotations" / "training").mkdir(parents=True, exist_ok=True)
    y, x = np.mgrid[0:height, 0:width]
    for index in range(count):
        centres = rng.uniform([0, 0], [height, width], size=(12, 2))
        nearest = np.argmin((y[..., None] - centres[:, 0]) ** 2 + (x[..., None] - centres[:, 1]) ** 2, axis=-1)
        classes = rng.integers(0, 151, size=12)
        colours = rng.uniform(0, 255, size=(12, 3))
        shading = (np.sin(x / rng.uniform(20, 80)) + np.cos(y / rng.uniform(20, 80)))[..., None] * 20
        image = np.clip(colours[nearest] + shading + rng.normal(0, 8, (height, width, 3)), 0, 255).astype(np.uint8)
        name = f"ADE_train_{index:08d}"
        Image.fromarray(image).save(root / "images" / "training" / f"{name}.jpg", quality=90)
        Image.fromarray(classes[nearest].astype(np.uint8)).save(root / "annotations" / "training" / f"{name}.png")


def opencv_direct_steps(image_bgr: np.ndarray, label: np.ndarray, rng: np.random.Generator) -> dict:
    """The baseline: mmseg's train pipeline written directly with OpenCV and numpy as mmseg/mmcv write it
    (BGR image, the same random draws as `TrainTransform`; its crop check with `np.unique`, its per-pixel float
    formulas for brightness, contrast and saturation), then normalisation and padding to the 512² crop."""
    import cv2

    ratio = rng.random() * 1.5 + 0.5
    bounds = (int(2048 * ratio), int(512 * ratio))
    factor = min(max(bounds) / max(image_bgr.shape[:2]), min(bounds) / min(image_bgr.shape[:2]))
    size = (int(image_bgr.shape[1] * factor + 0.5), int(image_bgr.shape[0] * factor + 0.5))
    image = cv2.resize(image_bgr, size, interpolation=cv2.INTER_LINEAR)
    label = cv2.resize(label, size, interpolation=cv2.INTER_NEAREST)

    def box():
        y1 = int(rng.integers(0, max(image.shape[0] - 512, 0) + 1))
        x1 = int(rng.integers(0, max(image.shape[1] - 512, 0) + 1))
        return y1, x1

    y1, x1 = box()
    for _ in range(10):
        values, counts = np.unique(label[y1 : y1 + 512, x1 : x1 + 512], return_counts=True)
        counts = counts[values != 255]
        if len(counts) > 1 and counts.max() / counts.sum() < 0.75:
            break
        y1, x1 = box()
    image, label = image[y1 : y1 + 512, x1 : x1 + 512], label[y1 : y1 + 512, x1 : x1 + 512]
    if rng.random() < 0.5:
        image, label = cv2.flip(image, 1), cv2.flip(label, 1)

    def convert(x, alpha=1.0, beta=0.0):
        return np.clip(x.astype(np.float32) * alpha + beta, 0, 255).astype(np.uint8)

    if rng.integers(2):
        image = convert(image, beta=rng.uniform(-32, 32))
    mode = rng.integers(2)
    if mode == 1 and rng.integers(2):
        image = convert(image, alpha=rng.uniform(0.5, 1.5))
    if rng.integers(2):
        hsv = cv2.cvtColor(image, cv2.COLOR_BGR2HSV)
        hsv[..., 1] = convert(hsv[..., 1], alpha=rng.uniform(0.5, 1.5))
        image = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)
    if rng.integers(2):
        hsv = cv2.cvtColor(image, cv2.COLOR_BGR2HSV)
        hsv[..., 0] = (hsv[..., 0].astype(int) + rng.integers(-18, 18)) % 180
        image = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)
    if mode == 0 and rng.integers(2):
        image = convert(image, alpha=rng.uniform(0.5, 1.5))
    rgb = cv2.cvtColor(image, cv2.COLOR_BGR2RGB).astype(np.float32)
    pixels = np.zeros((512, 512, 3), np.float32)
    pixels[: rgb.shape[0], : rgb.shape[1]] = (rgb - np.float32([123.675, 116.28, 103.53])) / np.float32(
        [58.395, 57.12, 57.375]
    )
    labels = np.full((512, 512), 255, np.int64)
    labels[: label.shape[0], : label.shape[1]] = label
    return {"pixel_values": torch.from_numpy(pixels.transpose(2, 0, 1)), "labels": torch.from_numpy(labels)}


def loader_images_per_second(dataset, workers: int, batch_size: int = 4, epochs: int = 3) -> float:
    """Images per second of the training DataLoader (persistent workers) over the epochs after the first."""
    from training.data import EpochShuffleSampler, collate_train
    from training.transforms import single_threaded_opencv

    sampler = EpochShuffleSampler(len(dataset), batch_size, seed=0, rank=0, world_size=1)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, collate_fn=collate_train, num_workers=workers,
        drop_last=True, persistent_workers=workers > 0, worker_init_fn=single_threaded_opencv,
        generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    images, start = 0, None
    for epoch in range(epochs):
        sampler.set_position(epoch, 0)
        for batch in loader:
            if start is not None:
                images += batch["pixel_values"].shape[0]
        start = start or time.perf_counter()  # steady state: from the end of the first epoch
    return images / (time.perf_counter() - start)


def part_data(args, matmul) -> list[Row]:
    """Decode + augmentation of ADE20K-sized photos on one core, against the same steps written directly with OpenCV
    and against MMSegmentation's measured 41 ms; then the training DataLoader at 0, 1 and 2 workers."""
    import tempfile

    import cv2
    from PIL import Image

    from training.data import SeededAugmentation, build_dataset, read_image, read_label
    from training.transforms import TrainTransform

    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    count = 4 if args.quick else DATA_IMAGES
    folder = Path(tempfile.mkdtemp(prefix="segret-data-benchmark-"))
    write_ade20k_like_photos(folder, count)
    files = sorted((folder / "images" / "training").glob("*.jpg"))
    labels = [folder / "annotations" / "training" / f"{path.stem}.png" for path in files]
    transform = TrainTransform((2048, 512), 512)
    decoded = [(read_image(str(path)), read_label(str(label))) for path, label in zip(files, labels)]
    decoded_bgr = [(image[..., ::-1].copy(), label) for image, label in decoded]
    per_call = len(files)

    def over_images(function):
        def run():
            for index in range(per_call):
                function(index, np.random.default_rng(index))

        return run

    contenders = [
        Contender(
            "the same steps directly with OpenCV (baseline)",
            over_images(lambda i, rng: opencv_direct_steps(*decoded_bgr[i], rng)),
        ),
        Contender("TrainTransform", over_images(lambda i, rng: transform(*decoded[i], rng))),
        Contender(
            "decode (cv2 image, Pillow label, as mmseg) + the same steps directly with OpenCV",
            over_images(
                lambda i, rng: opencv_direct_steps(cv2.imread(str(files[i])), np.asarray(Image.open(labels[i])), rng)
            ),
        ),
        Contender(
            "decode (training/data.py) + TrainTransform",
            over_images(lambda i, rng: transform(read_image(str(files[i])), read_label(str(labels[i])), rng)),
        ),
    ]
    load_before = os.getloadavg()[0]
    times = interleaved(contenders, args.rounds, warmup=1, device=torch.device("cpu"))
    load = (load_before, os.getloadavg()[0])
    group = f"one {ADE20K_PHOTO[0]}×{ADE20K_PHOTO[1]} photo, ADE20K augmentation (scale (2048, 512), crop 512²), 1 core"
    rows = []
    for contender, reference in zip(contenders, [None, contenders[0].name, None, contenders[2].name]):
        own = [seconds / per_call for seconds in times[contender.name]]
        row = Row(group, contender.name, 1e3 * statistics.median(own))
        row.note = f"{1 / statistics.median(own):.1f} images/s per core"
        if reference:
            ratios = [a / b for a, b in zip(times[contender.name], times[reference])]
            row.ratio, row.reference = statistics.median(ratios), reference
            row.extra["ratio range"] = (min(ratios), max(ratios))
        row.extra["load"] = load
        rows.append(row)
    rows[1].target, rows[1].met = "≤ 1.25×", rows[1].ratio <= 1.25
    mmseg_rate = 1e3 / MMSEG_PIPELINE_MS
    rows[3].target = f"≥ {mmseg_rate:.1f} images/s (MMSegmentation 1.2.2: {MMSEG_PIPELINE_MS:.0f} ms, measured earlier)"
    rows[3].met = 1e3 / rows[3].median_ms >= mmseg_rate
    print(format_table(rows), file=sys.stderr, flush=True)

    dataset = SeededAugmentation(build_dataset("ade20k", source=str(folder), split="train", train=True), seed=0)
    loader_group = f"training DataLoader, {count} photos, batch 4, persistent workers, steady state (epochs 2-3)"
    for workers in (0, 1, 2):
        load_before = os.getloadavg()[0]
        rate = loader_images_per_second(dataset, workers)
        name = f"{workers} worker{'' if workers == 1 else 's'} (ms per image)"
        row = Row(loader_group, name, 1e3 / rate, note=f"{rate:.1f} images/s")
        row.extra["load"] = (load_before, os.getloadavg()[0])
        rows.append(row)
        print(format_table(rows[-1:]), file=sys.stderr, flush=True)
    shutil.rmtree(folder)
    return rows


def format_data(rows: list[Row]) -> str:
    """The two targets of issue 19, and the DataLoader's images/s."""
    transform, decoded = rows[1], rows[3]
    verdict = {True: "met", False: "**missed**"}
    loaders = ", ".join(f"{row.name}: {row.note}" for row in rows[4:])
    return "\n".join(
        [
            "Targets of issue 19:",
            "",
            f"- TrainTransform: {transform.ratio:.2f}× the time of the same steps written directly with OpenCV "
            f"(target ≤ 1.25×): {verdict[transform.met]}",
            f"- decode + TrainTransform: {1e3 / decoded.median_ms:.1f} images/s per core, {decoded.median_ms:.1f} ms "
            f"(target ≥ {1e3 / MMSEG_PIPELINE_MS:.1f}, MMSegmentation 1.2.2's {MMSEG_PIPELINE_MS:.0f} ms measured "
            f"earlier on this machine class): {verdict[decoded.met]}",
            f"- training DataLoader, steady state: {loaders}",
        ]
    )


# ----------------------------------------------------------------------------------------------------------------
# Pipeline parts: what a user of `pipeline("image-segmentation")` waits for, and post-processing memory


def pipeline_call(segmenter, image) -> Callable[[], object]:
    return lambda: segmenter(image)


def one_step_post_processing(logits: torch.Tensor, target_size: tuple[int, int]) -> torch.Tensor:
    """The post-processing SegRet had before (and SegFormer's): all classes upsampled at once, then the argmax."""
    upsampled = torch.nn.functional.interpolate(logits.float(), size=target_size, mode="bilinear", align_corners=False)
    return upsampled[0].argmax(dim=0)


def part_pipeline(args, matmul) -> list[Row]:
    """Time per image of transformers' image-segmentation pipeline (pre-processing, model, post-processing)."""
    from PIL import Image
    from transformers import SegformerImageProcessorPil, pipeline

    from modeling_segret import SegRetImageProcessor, SegRetImageSegmentationPipeline

    segret_model = segret("tiny").eval()
    randomize_decoder_residuals(segret_model)
    segformer = segformer_b1().eval()
    # Two versions of each model: random heads (as the issue measured: many classes present, one mask each) and heads
    # where only 10 classes can win (as a trained model on one photo; see predict_a_handful_of_classes).
    few_classes = {name: copy.deepcopy(model) for name, model in [("SegRet", segret_model), ("SegFormer", segformer)]}
    sample = torch.randn(1, 3, 128, 128)
    for model in few_classes.values():
        predict_a_handful_of_classes(model, sample)

    def segmenters(segret_model, segformer, heads: str) -> dict:
        # SegformerImageProcessor resolves to this PIL class where torchvision is not installed (as here). SegRet runs
        # in its own pipeline class, the one `pipeline(..., trust_remote_code=True)` builds from a Hub repository.
        return {
            f"SegFormer-B1 pipeline (SegformerImageProcessor, 512×512), {heads}": pipeline(
                "image-segmentation", model=segformer, image_processor=SegformerImageProcessorPil()
            ),
            f"SegRet-Tiny pipeline (default keep-ratio processor, short side 512), {heads}": pipeline(
                "image-segmentation",
                model=segret_model,
                image_processor=SegRetImageProcessor(),
                pipeline_class=SegRetImageSegmentationPipeline,
            ),
            f"SegRet-Tiny pipeline (fixed 512×512 processor), {heads}": pipeline(
                "image-segmentation",
                model=segret_model,
                image_processor=SegRetImageProcessor(size=512),
                pipeline_class=SegRetImageSegmentationPipeline,
            ),
        }

    pipelines = {
        "10 winning classes": segmenters(few_classes["SegRet"], few_classes["SegFormer"], "10 winning classes"),
        "random heads": segmenters(segret_model, segformer, "random heads"),
    }
    rows = []
    generator = torch.Generator().manual_seed(0)
    # (height, width), target for the keep-ratio pipeline, head settings: 512² and the 640×480 photo with both
    # head settings, 1024×2048 (minutes per round) with few classes only.
    sizes = [((128, 128), "≤ 0.8", list(pipelines)), ((128, 256), "≤ 1.0", ["10 winning classes"])]
    if not args.quick:
        sizes = [
            ((512, 512), "≤ 0.8", list(pipelines)),
            ((480, 640), "≤ 0.8", list(pipelines)),
            ((1024, 2048), "≤ 1.0", ["10 winning classes"]),
        ]
    for (height, width), target, head_settings in sizes:
        pixels = torch.randint(0, 256, (height, width, 3), dtype=torch.uint8, generator=generator).numpy()
        image = Image.fromarray(pixels)
        for heads in head_settings:
            # One mask per class present is part of the time: the note says how many.
            contenders = [
                Contender(name, pipeline_call(segmenter, image), note=f"{len(segmenter(image))} classes predicted")
                for name, segmenter in pipelines[heads].items()
            ]
            rounds = args.rounds if height * width <= 512 * 512 else max(2, args.rounds // 2)
            if height * width > 1024 * 1024:
                rounds = max(2, args.rounds // 4)
            group = f"pipeline, one {height}×{width} image"
            group_rows = timed_rows(group, contenders, contenders[0].name, rounds, 1, args.device, matmul)
            for row in group_rows[1:3]:
                row.target, row.met = target, row.ratio <= float(target.split()[-1])
            rows += group_rows

    # Post-processing alone on SegRet-Tiny's 150 logits of a 512² input: before (channels-last logits, one step
    # to the target size) and now (contiguous logits, through the input size, a few classes at a time).
    processor = SegRetImageProcessor(size=512)
    with torch.inference_mode():
        logits = segret_model(torch.randn(1, 3, args.image_size, args.image_size)).logits
    channels_last = logits.contiguous(memory_format=torch.channels_last)
    outputs = SemanticSegmenterOutput(logits=logits)
    target = (args.image_size, args.image_size)
    contenders = [
        Contender("one step, channels-last logits (before)", lambda: one_step_post_processing(channels_last, target)),
        Contender("one step, contiguous logits", lambda: one_step_post_processing(logits, target)),
        Contender(
            "post_process_semantic_segmentation (now: contiguous, via the input size, running class maximum)",
            lambda: processor.post_process_semantic_segmentation(outputs, target_sizes=[target]),
        ),
    ]
    group = f"post-processing, {NUM_LABELS} classes, {args.image_size}² logits ×4"
    return rows + timed_rows(group, contenders, contenders[0].name, args.rounds, 1, args.device, matmul)


def postprocess_memory_child(name: str, height: int, width: int) -> None:
    """Runs in a fresh process: post-processes the 150-class logits of one height × width photo; prints GiB as JSON."""
    from modeling_segret import SegRetImageProcessor

    processor = SegRetImageProcessor()
    input_height, input_width = processor.resized_size(height, width)
    logits = torch.randn(1, NUM_LABELS, math.ceil(input_height / 4), math.ceil(input_width / 4))
    if name.startswith("before"):
        logits = logits.contiguous(memory_format=torch.channels_last)  # as the model returned them before
    before, _ = resident_memory_gib()
    start = time.perf_counter()
    with torch.inference_mode():
        if name.startswith("before"):
            segmentation = one_step_post_processing(logits, (height, width))
        else:
            outputs = SemanticSegmenterOutput(logits=logits)
            segmentation = processor.post_process_semantic_segmentation(outputs, target_sizes=[(height, width)])[0]
    seconds = time.perf_counter() - start
    _, peak = resident_memory_gib()
    assert tuple(segmentation.shape) == (height, width)
    print(json.dumps({"before": before, "peak": peak, "seconds": seconds}))


POSTPROCESS_MEMORY = (
    "before: all classes upsampled at once (channels-last logits)",
    "now: SegRetImageProcessor.post_process_semantic_segmentation",
)


def part_postprocess_memory(args, matmul) -> list[Row]:
    height, width = (600, 400) if args.quick else (3000, 2000)
    rows = []
    for name in POSTPROCESS_MEMORY:
        report = fresh_process_report("--postprocess_child", name, height, width, args.threads)
        row = Row(f"post-processing one {height}×{width} photo, {NUM_LABELS} classes", name, 1e3 * report["seconds"])
        growth = report["peak"] - report["before"]
        row.memory = f"{report['peak']:.2f} GiB peak RSS (+{growth:.2f} for the post-processing)"
        row.note = "one call in a fresh process"
        if name.startswith("now"):
            row.target, row.met = "bounded (≤ 1 GiB growth)", growth <= 1.0
        rows.append(row)
    return rows


# High resolution (CPU and GPU suites): the four variants vs SegFormer matched by parameters


HIGHRES_MODELS = {f"SegRet-{variant.capitalize()}": functools.partial(segret, variant) for variant in VARIANTS}
HIGHRES_MODELS.update({f"SegFormer-{size}": functools.partial(segformer, size) for size in SEGFORMER_SIZES})
# Each variant against the SegFormer nearest in parameters among B1-B3 (Large has 96.4M, B3 47.3M: no closer peer
# in the set; B5, 84.7M, would be the match).
HIGHRES_PEERS = {
    "SegRet-Tiny": "SegFormer-B1",
    "SegRet-Small": "SegFormer-B2",
    "SegRet-Base": "SegFormer-B3",
    "SegRet-Large": "SegFormer-B3",
}
HIGHRES_SIZES = ((512, 512), (1024, 1024), (1024, 2048), (2048, 2048))
HIGHRES_QUICK_SIZES = ((64, 64), (64, 128))


def highres_rounds(args, height: int, width: int) -> int:
    """On the CPU, rounds in inverse proportion to the pixels (about equal time per size, at least one): `--rounds`
    at 512², 9 by default -> 9, 2, 1, 1 (one round at 2048² runs all seven models at 16× the pixels of 512²)."""
    if args.device.type == "cuda" or args.quick:
        return args.rounds
    return max(1, round(args.rounds * 512 * 512 / (height * width)))


def cpu_peak_memory(name: str, height: int, width: int, threads: int) -> tuple[float, float]:
    """(peak, growth over the loaded model) resident GiB of one forward in a fresh process (see `memory_child`)."""
    report = fresh_process_report("--memory_child", name, height, width, threads)
    return report["peak"], report["peak"] - report["before"]


def gpu_peak_memory(model: torch.nn.Module, pixel_values: torch.Tensor) -> tuple[float, float] | None:
    """(peak allocated GiB counting this model's weights, growth over all loaded weights) of one forward; None if
    it runs out of memory."""
    torch.cuda.synchronize(pixel_values.device)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(pixel_values.device)
    before = torch.cuda.memory_allocated(pixel_values.device)
    try:
        inference(model, pixel_values)()
        torch.cuda.synchronize(pixel_values.device)
    except torch.OutOfMemoryError:
        torch.cuda.empty_cache()
        return None
    growth = (torch.cuda.max_memory_allocated(pixel_values.device) - before) / 2**30
    weights = sum(tensor.numel() * tensor.element_size() for tensor in model.state_dict().values()) / 2**30
    return weights + growth, growth


def part_highres(args, matmul) -> list[Row]:
    """All models at each size (and batch size on a GPU): interleaved rounds with the matmul reference, each
    variant's time ratio to its peer per round; peak memory of one forward per model (CPU: a fresh process each)."""
    sizes = HIGHRES_QUICK_SIZES if args.quick else HIGHRES_SIZES
    on_gpu = args.suite == "gpu"
    batch_sizes = ((2,) if args.quick else (1, 16)) if on_gpu else (1,)
    precision = str(args.dtype).removeprefix("torch.")
    models = {name: build().to(args.device, args.dtype).eval() for name, build in HIGHRES_MODELS.items()}
    parameters = {name: sum(p.numel() for p in model.parameters()) for name, model in models.items()}
    rows = []
    for batch_size in batch_sizes:
        for height, width in sizes:
            group = f"{height}×{width}, batch {batch_size}, {precision}"
            pixel_values = torch.randn(batch_size, 3, height, width, device=args.device, dtype=args.dtype)
            start = time.perf_counter()
            # --quick: fresh processes (seconds of start-up each) for the Tiny pair at the last size only.
            quick_memory = ("SegRet-Tiny", "SegFormer-B1") if (height, width) == sizes[-1] else ()
            memory = {}
            for name, model in models.items():
                if args.device.type == "cuda":
                    memory[name] = gpu_peak_memory(model, pixel_values)
                elif not on_gpu and (not args.quick or name in quick_memory):
                    memory[name] = cpu_peak_memory(name, height, width, args.threads)
            # Models that ran out of GPU memory are left out of the rounds.
            runnable = [name for name in models if not (args.device.type == "cuda" and memory[name] is None)]
            contenders = [Contender(name, inference(models[name], pixel_values)) for name in runnable]
            rounds = highres_rounds(args, height, width)
            times = interleaved(contenders + [matmul], rounds, 1, args.device)
            for name in models:
                row = Row(group, name, 1e3 * statistics.median(times[name]) if name in times else float("nan"))
                row.note = f"{parameters[name] / 1e6:.1f}M parameters"
                row.extra = {"height": height, "width": width, "batch_size": batch_size, "rounds": rounds}
                row.extra["parameters"] = parameters[name]
                peer = HIGHRES_PEERS.get(name)
                if peer and name in times and peer in times:
                    row.ratio = statistics.median(a / b for a, b in zip(times[name], times[peer]))
                    row.reference = peer
                if name in memory and memory[name] is None:
                    row.memory, row.note = "out of memory", row.note + "; out of GPU memory, not timed"
                elif name in memory:
                    peak, growth = memory[name]
                    row.memory = f"{peak:.2f} GiB peak (+{growth:.2f})"
                    row.extra["peak_memory_gib"] = peak
                rows.append(row)
            matmul_note = "load gauge: about 100 ms on this CPU when it is quiet" if args.device.type == "cpu" else ""
            rows.append(Row(group, matmul.name, 1e3 * statistics.median(times[matmul.name]), note=matmul_note))
            print(f"[highres {group}: {time.perf_counter() - start:.0f} s]\n{format_table(rows)}", file=sys.stderr)
            if args.device.type == "cuda":
                torch.cuda.empty_cache()
    return rows


def format_crossover(rows: list[Row]) -> str:
    """Each variant ÷ its peer per size, time and peak memory, and where the time ratio crosses 1."""
    measured = [row for row in rows if row.extra]  # not the matmul reference

    def size_key(row: Row) -> tuple[int, int, int]:
        return row.extra["batch_size"], row.extra["height"], row.extra["width"]

    sizes = list(dict.fromkeys(size_key(row) for row in measured))
    by_key = {(row.name, *size_key(row)): row for row in measured}
    header = ["variant ÷ peer (parameters)", "measure"] + [f"{h}×{w}, batch {b}" for b, h, w in sizes]
    lines = ["| " + " | ".join(header + ["crossover (time)"]) + " |", "|" + "---|" * (len(header) + 1)]
    for name, peer in HIGHRES_PEERS.items():
        own_rows = [by_key.get((name, *size)) for size in sizes]
        peer_rows = [by_key.get((peer, *size)) for size in sizes]
        if not all(own_rows):
            continue
        millions = [row.extra["parameters"] / 1e6 for row in (own_rows[0], peer_rows[0])]
        label = f"{name} ({millions[0]:.1f}M) ÷ {peer} ({millions[1]:.1f}M)"
        time_ratios = [row.ratio for row in own_rows]
        memory_ratios = [
            own.extra["peak_memory_gib"] / other.extra["peak_memory_gib"]
            if "peak_memory_gib" in own.extra and "peak_memory_gib" in other.extra
            else None
            for own, other in zip(own_rows, peer_rows)
        ]
        cells = [f"{ratio:.2f}" if ratio is not None else "" for ratio in time_ratios]
        lines.append(f"| {label} | time | " + " | ".join(cells) + f" | {crossover(time_ratios, sizes)} |")
        cells = [f"{ratio:.2f}" if ratio is not None else "" for ratio in memory_ratios]
        lines.append("| | peak memory | " + " | ".join(cells) + " | |")
    rounds = {size_key(row): row.extra["rounds"] for row in measured}
    rounds_text = ", ".join(f"{h}×{w}, batch {b}: {rounds[b, h, w]}" for b, h, w in sizes)
    return "\n".join(lines) + f"\n\nTimed rounds (after one warm-up round): {rounds_text}."


def format_deploy(rows: list[Row]) -> str:
    """One line per runtime and size: both models' median times, SegRet-Tiny ÷ SegFormer-B1 (median and range of the
    per-round ratios) and each model's time relative to its own eager PyTorch."""
    by_name = {(row.group, row.name): row for row in rows}
    lines = [
        "| size | runtime | SegRet-Tiny ms | SegFormer-B1 ms | SegRet ÷ SegFormer (rounds) | target | "
        "SegRet × its eager | SegFormer × its eager | argmax agreement SegRet / SegFormer | load average |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        if not row.name.startswith("SegRet-Tiny "):
            continue
        runtime = row.name.removeprefix("SegRet-Tiny ")
        peer = by_name.get((row.group, f"SegFormer-B1 {runtime}"))
        if peer is None:
            continue
        low, high = row.extra["ratio range"]
        target = "" if row.met is None else f"{row.target}: {'met' if row.met else '**missed**'}"
        relative = [f"{r.extra['× own eager']:.2f}" if "× own eager" in r.extra else "1" for r in (row, peer)]
        agreements = [r.note.split("argmax agreement with eager ")[1].split(";")[0].split(" ")[0] for r in (row, peer)]
        lines.append(
            f"| {row.group.removeprefix('deploy ')} | {runtime} | {row.median_ms:.0f} | {peer.median_ms:.0f} | "
            f"{row.ratio:.2f} ({low:.2f}–{high:.2f}) | {target} | {relative[0]} | {relative[1]} | "
            f"{agreements[0]} / {agreements[1]} | " + "{:.1f}→{:.1f}".format(*row.extra["load"]) + " |"
        )
    return "\n".join(lines)


def crossover(ratios: list[float | None], sizes: list[tuple[int, int, int]]) -> str:
    """Where a variant ÷ peer time ratio changes side of 1, in words."""
    measured = [(ratio, f"{h}×{w}, batch {b}") for ratio, (b, h, w) in zip(ratios, sizes) if ratio is not None]
    if not measured:
        return "not measured"
    if all(ratio <= 1 for ratio, _ in measured):
        return "faster at every size"
    if all(ratio > 1 for ratio, _ in measured):
        return "slower at every size"
    changes = [
        f"{'slower' if ratio > 1 else 'faster'} from {size}"
        for (previous, _), (ratio, size) in zip(measured, measured[1:])
        if (previous > 1) != (ratio > 1)
    ]
    return f"{'faster' if measured[0][0] <= 1 else 'slower'} at {measured[0][1]}, " + ", ".join(changes)


# ----------------------------------------------------------------------------------------------------------------
# GPU parts (bfloat16, batch 16)


def part_throughput(args, matmul) -> list[Row]:
    dtype, batch_size = args.dtype, args.batch_size
    pixel_values = torch.randn(batch_size, 3, args.image_size, args.image_size, device=args.device, dtype=dtype)
    models = {"SegFormer-B1": segformer_b1()}
    models.update({f"SegRet-{variant.capitalize()}": segret(variant) for variant in VARIANTS})
    contenders = []
    for name, model in models.items():
        model = model.to(args.device, dtype).eval()
        contender = Contender(name, inference(model, pixel_values))
        contender.macs = count_macs(contender.run)
        contenders.append(contender)
    if args.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(args.device)
    group = f"inference {args.image_size}², batch {batch_size}, {str(dtype).removeprefix('torch.')}"
    rows = timed_rows(group, contenders, "SegFormer-B1", args.rounds, 2, args.device, matmul)
    for row in rows[:-1]:
        row.extra["images/s"] = batch_size / (row.median_ms / 1e3)
        row.note = f"{batch_size / (row.median_ms / 1e3):.1f} images/s"
    rows[1].target, rows[1].met = "≤ 0.8", rows[1].ratio <= 0.8
    if args.device.type == "cuda":
        rows[-1].memory = f"{torch.cuda.max_memory_allocated(args.device) / 2**30:.2f} GiB peak allocated (all models)"
    return rows


# ----------------------------------------------------------------------------------------------------------------
# Report


def format_table(rows: list[Row]) -> str:
    columns = ["measurement", "contender", "median ms", "ratio", "target", "met", "GMAC", "GMAC/s", "of matmul peak"]
    columns += ["memory", "load average (1 min, start→end)", "notes"]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        ratio = f"{row.ratio:.3f} × {row.reference}" if row.ratio is not None else ""
        if "ratio range" in row.extra:
            ratio += " (rounds {:.2f}–{:.2f})".format(*row.extra["ratio range"])
        if "speed-up" in row.extra:
            ratio += f" ({row.extra['speed-up']:.2f}× faster)"
        met = "" if row.met is None else ("yes" if row.met else "**no**")
        lines.append(
            "| "
            + " | ".join(
                [
                    row.group,
                    row.name,
                    f"{row.median_ms:.1f}",
                    ratio,
                    row.target,
                    met,
                    f"{row.macs / 1e9:.2f}" if row.macs else "",
                    f"{row.mac_rate / 1e9:.1f}" if row.mac_rate else "",
                    f"{row.peak_fraction:.0%}" if row.peak_fraction else "",
                    row.memory,
                    "{:.1f}→{:.1f}".format(*row.extra["load"]) if "load" in row.extra else "",
                    row.note,
                ]
            )
            + " |"
        )
    return "\n".join(lines)


def format_targets(rows: list[Row]) -> str:
    lines = ["Targets of the issue:", ""]
    for row in rows:
        if row.met is not None:
            measured = row.memory.split(" (")[0] if row.memory else f"{row.ratio:.3f} × {row.reference}"
            if "speed-up" in row.extra:
                measured = f"{row.extra['speed-up']:.2f}× faster than {row.reference}"
            verdict = "met" if row.met else "**missed**"
            lines.append(f"- {row.name}, {row.group}: {measured} (target {row.target}): {verdict}")
    return "\n".join(lines)


def machine_description(args) -> str:
    cpu_model = "unknown CPU"
    if Path("/proc/cpuinfo").exists():
        match = re.search(r"model name\s*:\s*(.+)", Path("/proc/cpuinfo").read_text())
        cpu_model = match.group(1).strip() if match else cpu_model
    lines = [
        f"- date: {datetime.datetime.now().astimezone().strftime('%Y-%m-%d %H:%M %Z')}",
        f"- CPU: {cpu_model}, {os.cpu_count()} logical cores, torch threads: {torch.get_num_threads()}, "
        f"capability {torch.backends.cpu.get_cpu_capability()}",
        f"- torch {torch.__version__}, transformers {transformers.__version__}, Python {platform.python_version()}",
        f"- load average at the end: {', '.join(f'{load:.2f}' for load in os.getloadavg())}",
        f"- command: `python benchmarks/run.py {' '.join(sys.argv[1:])}`; {args.rounds} interleaved rounds per group",
    ]
    if args.device.type == "cuda":
        lines.insert(2, f"- GPU: {torch.cuda.get_device_name(args.device)}")
    elif args.suite == "gpu":
        lines.insert(2, "- GPU suite run on the CPU (smoke test of its code path only)")
    return "\n".join(lines)


def write_section(path: Path, suite: str, body: str) -> None:
    """Replaces this suite's section of BENCHMARKS.md (between markers), keeping the other suite's results."""
    begin, end = f"<!-- results:{suite} -->", f"<!-- /results:{suite} -->"
    section = f"{begin}\n{body}\n{end}"
    text = path.read_text() if path.exists() else "# SegRet benchmarks\n"
    if begin in text:
        text = text[: text.index(begin)] + section + text[text.index(end) + len(end) :]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    path.write_text(text)


# glibc returns freed blocks above its mmap threshold to the system, so a formulation with large temporaries pays
# page faults on every call; the threshold also adapts to the process's history. Each part therefore runs in a
# fresh process, and the backbone comparison is repeated with the threshold raised (no page faults for anyone).
HEAP_ALLOCATOR = {"MALLOC_MMAP_THRESHOLD_": str(2**30), "MALLOC_TRIM_THRESHOLD_": str(2**31)}
SUITES = {
    "cpu": {
        "model": (part_model, {}),
        "model-heap": (part_model, HEAP_ALLOCATOR),
        "official": (part_official, {}),
        "backbone": (part_backbone, {}),
        "backbone-heap": (part_backbone, HEAP_ALLOCATOR),
        "variants": (part_variants, {}),
        "levers": (part_levers, {}),
        "compile": (part_compile, {}),
        "onnx": (part_onnx, {}),
        "deploy": (part_deploy, {}),
        "global-stage": (part_global_stage, {}),
        "train": (part_train, {}),
        "memory": (part_memory, {}),
        "pipeline": (part_pipeline, {}),
        "postprocess-memory": (part_postprocess_memory, {}),
        "highres": (part_highres, {}),
        "data": (part_data, {}),
    },
    "gpu": {
        "throughput": (part_throughput, {}),
        "backbone": (part_backbone, {}),
        "train": (part_train, {}),
        "highres": (part_highres, {}),
    },
}
# Parts that run only when named in --parts (long: minutes per size on a 2-core CPU) and write their own
# BENCHMARKS.md section, with the summary that this function formats above their table.
OWN_SECTION_PARTS = {"highres": format_crossover, "deploy": format_deploy, "data": format_data}


def run_part_in_fresh_process(part: str, argv: list[str], environment: dict) -> list[Row]:
    command = [sys.executable, __file__, *argv, "--part_child", part]
    # The child's progress (stderr) goes straight to ours: long parts print each group as it is measured.
    result = subprocess.run(command, stdout=subprocess.PIPE, text=True, env={**os.environ, **environment})
    if result.returncode != 0:
        raise SystemExit(f"part {part!r} failed (its error output is above)")
    rows = [Row(**row) for row in json.loads(result.stdout.strip().splitlines()[-1])]
    if environment == HEAP_ALLOCATOR:
        for row in rows:
            row.group += ", glibc mmap threshold 1 GiB"
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--parts", nargs="+", help="subset of the suite's parts (default: all)")
    parser.add_argument("--rounds", type=int, help="interleaved rounds per group (default: cpu 11, gpu 10)")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch CPU threads")
    parser.add_argument(
        "--suite", choices=list(SUITES), help="cpu or gpu measurements (default: the device's; gpu on cpu = smoke test)"
    )
    parser.add_argument("--quick", action="store_true", help="smoke test: small inputs, 1 round, no file written")
    parser.add_argument(
        "--deploy_sizes",
        nargs="+",
        type=lambda text: tuple(int(side) for side in text.split("x")),
        default=list(DEPLOY_SIZES),
        metavar="HxW",
        help="image sizes of the deploy part (default: 512x512 1024x2048)",
    )
    parser.add_argument("--output", type=Path, default=REPOSITORY / "BENCHMARKS.md")
    parser.add_argument("--part_child", help=argparse.SUPPRESS)
    parser.add_argument("--memory_child", help=argparse.SUPPRESS)
    parser.add_argument("--postprocess_child", help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, nargs=2, default=(1024, 2048), help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.memory_child:
        memory_child(args.memory_child, *args.size)
        return
    if args.postprocess_child:
        postprocess_memory_child(args.postprocess_child, *args.size)
        return

    args.device = torch.device(args.device)
    if args.device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available")
    args.suite = args.suite or ("cpu" if args.device.type == "cpu" else "gpu")
    runners = SUITES[args.suite]
    parts = args.parts or [part for part in runners if part not in OWN_SECTION_PARTS]
    if unknown := set(parts) - set(runners):
        raise SystemExit(f"unknown parts for the {args.suite} suite: {sorted(unknown)}; choose from {list(runners)}")
    args.rounds = args.rounds or (1 if args.quick else (11 if args.suite == "cpu" else 10))
    args.image_size = 128 if args.quick else 512
    args.dtype = torch.float32 if args.suite == "cpu" else torch.bfloat16
    args.batch_size = 1 if args.suite == "cpu" else (2 if args.quick else 16)

    if args.part_child:
        torch.manual_seed(0)
        run, _ = runners[args.part_child]
        rows = run(args, matmul_contender(args.device, args.dtype))
        print(json.dumps([dataclasses.asdict(row) for row in rows]))
        return

    child_argv = ["--device", args.device.type, "--suite", args.suite, "--rounds", str(args.rounds)]
    child_argv += ["--threads", str(args.threads)] + (["--quick"] if args.quick else [])
    child_argv += ["--deploy_sizes", *(f"{height}x{width}" for height, width in args.deploy_sizes)]
    rows = []
    for part in parts:
        start, load_before = time.perf_counter(), os.getloadavg()
        _, environment = runners[part]
        part_rows = run_part_in_fresh_process(part, child_argv, environment)
        print(f"[{part}: {time.perf_counter() - start:.0f} s]\n{format_table(part_rows)}", file=sys.stderr)
        if part not in OWN_SECTION_PARTS:
            rows += part_rows
            continue
        load = f"- load average before the part: {', '.join(f'{value:.2f}' for value in load_before)}"
        body = f"### {args.suite.upper()}: {part}\n\n{machine_description(args)}\n{load}\n\n"
        body += f"{OWN_SECTION_PARTS[part](part_rows)}\n\n{format_table(part_rows)}"
        print(body)
        if not args.quick:
            write_section(args.output, f"{args.suite}-{part}", body)

    if rows:
        body = (
            f"## {args.suite.upper()}\n\n{machine_description(args)}\n\n{format_targets(rows)}\n\n{format_table(rows)}"
        )
        print(body)
        if not args.quick:
            write_section(args.output, args.suite, body)


if __name__ == "__main__":
    main()
