"""Deployment: one exported program for every batch and image size, ONNX under onnxruntime, torch.compile, and the
export command's verification (including an artefact whose weights were changed after export)."""

import importlib.util
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch
from conftest import small_config
from test_speed_paths import trained_like

from modeling_segret import SegRetBackbone, SegRetForSemanticSegmentation, SegRetModel
from modeling_segret import export as export_command
from modeling_segret.modeling_segret import apply_rotary_position

REPOSITORY = Path(__file__).resolve().parents[1]
# (batch, height, width): odd, wide, tall, batch 1 to 4; the example traced at export is (2, 96, 128)
SHAPES = [(1, 97, 131), (4, 64, 64), (3, 48, 200), (1, 224, 160), (2, 96, 128)]
HAS_ONNX = all(importlib.util.find_spec(name) is not None for name in export_command.ONNX_PACKAGES)


def tiny_config(**overrides):
    """Both retention modes, layer scale and the FFN convolution, one block per stage (fast to export)."""
    return small_config(depths=[1, 1, 1, 1], **overrides)


def flat_outputs(output) -> list[torch.Tensor]:
    """The tensors of a model output (logits, last_hidden_state, feature_maps, ...) in a fixed order."""
    leaves, _ = torch.utils._pytree.tree_flatten(output)
    return [leaf for leaf in leaves if isinstance(leaf, torch.Tensor)]


@pytest.mark.slow
@pytest.mark.parametrize("model_class", [SegRetForSemanticSegmentation, SegRetModel, SegRetBackbone])
def test_exported_program_with_dynamic_shapes_equals_eager(model_class):
    """`torch.export` with dynamic batch/height/width gives one program that runs at every size, equal to eager."""
    model = model_class(tiny_config()).eval()
    if isinstance(model, SegRetForSemanticSegmentation):
        trained_like(model)
    auto = torch.export.Dim.AUTO
    program = torch.export.export(
        model, (torch.randn(2, 3, 96, 128),), dynamic_shapes={"pixel_values": {0: auto, 2: auto, 3: auto}}
    )
    exported = program.module()
    for batch_size, height, width in SHAPES:
        pixel_values = torch.randn(batch_size, 3, height, width)
        with torch.no_grad():
            expected, actual = flat_outputs(model(pixel_values)), flat_outputs(exported(pixel_values))
        assert len(actual) == len(expected) > 0
        for value, reference in zip(actual, expected):
            torch.testing.assert_close(value, reference, rtol=0, atol=1e-5)


@pytest.mark.slow
def test_aot_inductor_package_with_static_shapes_equals_eager(tmp_path):
    """AOTInductor compiles an exported program of fixed shape into a package that equals eager (docs/deployment.md;
    with dynamic shapes inductor itself fails in torch 2.13, as it does for SegFormer)."""
    model = trained_like(SegRetForSemanticSegmentation(tiny_config())).eval()
    pixel_values = torch.randn(2, 3, 96, 128)
    with torch.no_grad():
        program = torch.export.export(model, (pixel_values,))
        package = torch._inductor.aoti_compile_and_package(program, package_path=str(tmp_path / "segret.pt2"))
        compiled = torch._inductor.aoti_load_package(package)
        expected, actual = flat_outputs(model(pixel_values)), flat_outputs(compiled(pixel_values))
    assert len(actual) == len(expected) > 0
    for value, reference in zip(actual, expected):
        torch.testing.assert_close(value, reference, rtol=0, atol=1e-5)


def test_real_rotation_equals_the_complex_product():
    """The real-arithmetic rotation (compile/export) equals the complex one (eager) to float rounding."""
    position = SegRetForSemanticSegmentation(tiny_config()).segret.encoder.stages[0].relative_position
    for dtype, tolerance in [(torch.float32, 1e-6), (torch.float64, 1e-14)]:
        rotation = position(1, 12, 20, dtype, torch.device("cpu")).rotation
        real_rotation = position(1, 12, 20, dtype, torch.device("cpu"), real_rotation=True).rotation
        assert isinstance(real_rotation, tuple) and not isinstance(rotation, tuple)
        states = torch.randn(2, 12, 20, position.num_heads, position.head_dim, dtype=dtype)
        complex_product = apply_rotary_position(states, rotation)
        real_arithmetic = apply_rotary_position(states, real_rotation)
        torch.testing.assert_close(real_arithmetic, complex_product, rtol=0, atol=tolerance)
        # and both are RMT's x * cos + rot(x) * sin
        angle = torch.atan2(rotation[..., 1], rotation[..., 0]).repeat_interleave(2, dim=-1)
        rotated_pairs = torch.stack([-states[..., 1::2], states[..., 0::2]], dim=-1).flatten(-2)
        expected = states * angle.cos() + rotated_pairs * angle.sin()
        torch.testing.assert_close(complex_product, expected, rtol=0, atol=10 * tolerance)


def test_traced_tables_are_exact_products(monkeypatch):
    """The traced graphs' tables are formed by matrix products (so that inductor stores them once instead of
    recomputing them in every block's kernels) and the ONNX rotation swaps pairs by a 0/1 matrix product (a reversed
    `Slice` is slow in onnxruntime): all of them equal the element-wise formulas bit for bit."""
    for stage in SegRetForSemanticSegmentation(tiny_config()).segret.encoder.stages[:3]:
        position = stage.relative_position
        for dtype in (torch.float32, torch.float64):
            angle, decay = (table.to(dtype) for table in position.base_tables())
            tables = position(1, 6, 9, dtype, torch.device("cpu"), dense_global_mask=True, real_rotation=True)
            phase = torch.arange(6 * 9, dtype=dtype)[:, None] * angle[None, 0::2]
            pair_shape = (6, 9, 1, position.head_dim // 2, 2)
            cos, sin = phase.cos()[..., None], phase.sin()[..., None]
            assert torch.equal(tables.rotation[0], torch.cat((cos, cos), -1).reshape(pair_shape))
            assert torch.equal(tables.rotation[1], torch.cat((-sin, sin), -1).reshape(pair_shape))
            for mask, length in zip(tables.decay_masks, (6, 9) if position.mode == "decomposed" else (None,)):
                if length is None:
                    rows = (torch.arange(6)[:, None] - torch.arange(6)).abs()[:, None, :, None]
                    columns = (torch.arange(9)[:, None] - torch.arange(9)).abs()[None, :, None, :]
                    distance = (rows + columns).reshape(54, 54).to(dtype)
                else:
                    distance = (torch.arange(length)[:, None] - torch.arange(length)).abs().to(dtype)
                assert torch.equal(mask, (distance * decay[:, None, None])[None])

            # autocast leaves the rotation tables alone (bfloat16 cannot even hold the raster index of large images)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                under_autocast = position(1, 64, 96, dtype, torch.device("cpu"), real_rotation=True).rotation
            plain = position(1, 64, 96, dtype, torch.device("cpu"), real_rotation=True).rotation
            assert all(torch.equal(a, b) for a, b in zip(under_autocast, plain))
            if position.mode == "decomposed":  # and so are the decomposed masks
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    masks_under_autocast = position(1, 64, 96, dtype, torch.device("cpu")).decay_masks
                masks = position(1, 64, 96, dtype, torch.device("cpu")).decay_masks
                assert all(torch.equal(a, b) for a, b in zip(masks_under_autocast, masks))

            states = torch.randn(2, 6, 9, position.num_heads, position.head_dim, dtype=dtype)
            elementwise = apply_rotary_position(states, tables.rotation)
            monkeypatch.setattr(torch.onnx, "is_in_onnx_export", lambda: True)
            as_exported = apply_rotary_position(states, tables.rotation)
            monkeypatch.undo()
            assert torch.equal(as_exported, elementwise)


def test_dense_global_mask_equals_the_strided_one():
    """The traced graphs' dense (1, N, H*W, H*W) global mask holds the values of eager's strided row windows."""
    position = SegRetForSemanticSegmentation(tiny_config()).segret.encoder.stages[2].relative_position
    assert position.mode == "global"
    height, width = 5, 7
    (strided,) = position(2, height, width, torch.float64, torch.device("cpu")).decay_masks  # (H, B*N, W, H*W)
    (dense,) = position(2, height, width, torch.float64, torch.device("cpu"), dense_global_mask=True).decay_masks
    assert dense.shape == (1, position.num_heads, height * width, height * width)
    # strided[s, b*N + n, c, key] is query row H-1-s, column c, of image b
    by_query = strided.flip(0).unflatten(1, (2, position.num_heads)).permute(1, 2, 0, 3, 4)  # (B, N, H, W, H*W)
    for image in range(2):
        torch.testing.assert_close(by_query[image].reshape(dense.shape[1:]), dense[0], rtol=0, atol=0)


def complex_values_in_compiled_graph(model, pixel_values) -> list[str]:
    """Names of the nodes of the graph that `torch.compile` captures whose value is complex."""
    names = []

    def record(graph_module, example_inputs):
        for node in graph_module.graph.nodes:
            values = node.meta.get("example_value")
            values = values if isinstance(values, (tuple, list)) else [values]
            if any(isinstance(value, torch.Tensor) and value.is_complex() for value in values):
                names.append(node.name)
        return graph_module.forward

    with torch.no_grad():
        torch.compile(model, backend=record, fullgraph=True)(pixel_values)
    torch._dynamo.reset()
    return names


@pytest.mark.slow
def test_compiled_model_equals_eager_with_the_real_rotation():
    """Under torch.compile no value is complex (inductor generates code for the whole graph), and inductor's
    compiled model equals eager."""
    model = trained_like(SegRetForSemanticSegmentation(tiny_config())).eval()
    pixel_values = torch.randn(2, 3, 64, 96)
    assert complex_values_in_compiled_graph(model, pixel_values) == []
    compiled = torch.compile(model, fullgraph=True, dynamic=False)
    with torch.no_grad():
        actual = compiled(pixel_values).logits
        expected = model(pixel_values).logits
    torch.testing.assert_close(actual, expected, rtol=0, atol=1e-4)


# ----------------------------------------------------------------------------------------------------- the command


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("segret")
    trained_like(SegRetForSemanticSegmentation(tiny_config())).save_pretrained(folder)
    return folder


def command(saved_model: Path, export_format: str, output: Path, *extra: str) -> list[str]:
    shapes = ["1x97x131", "4x64x64", "2x160x96", "1x128x256"]
    return [
        "--model",
        str(saved_model),
        "--format",
        export_format,
        "--output",
        str(output),
        "--shapes",
        *shapes,
        *extra,
    ]


@pytest.fixture(scope="module")
def onnx_file(saved_model, tmp_path_factory) -> Path:
    if not HAS_ONNX:
        pytest.skip("onnx, onnxscript and onnxruntime are not installed (pip install -e '.[export]')")
    output = tmp_path_factory.mktemp("onnx") / "segret.onnx"
    assert export_command.main(command(saved_model, "onnx", output)) == 0
    return output


@pytest.mark.slow
def test_onnx_under_onnxruntime_equals_eager_at_every_size(saved_model, onnx_file):
    model = SegRetForSemanticSegmentation.from_pretrained(saved_model).eval()
    artefact = export_command.load_artefact(onnx_file, "onnx")
    shapes = [(1, 97, 131), (4, 64, 64), (2, 160, 96), (1, 128, 256), (3, 200, 48)]
    results = export_command.verify(model, artefact, shapes, tolerance=1e-4)
    assert [result.shape for result in results] == shapes
    for result in results:
        assert result.max_abs_difference <= 1e-4 and result.argmax_agreement == 1.0, result


@pytest.mark.slow
def test_command_rejects_a_tampered_onnx_file(saved_model, onnx_file, tmp_path, capsys):
    import onnx
    from onnx import numpy_helper

    model = onnx.load(onnx_file)
    initializer = max(model.graph.initializer, key=lambda tensor: numpy_helper.to_array(tensor).size)
    changed = numpy_helper.to_array(initializer) * 1.01
    initializer.CopyFrom(numpy_helper.from_array(changed, initializer.name))
    tampered = tmp_path / "tampered.onnx"
    onnx.save(model, tampered)
    assert export_command.main(command(saved_model, "onnx", tampered, "--verify_only")) == 1
    assert "FAILED" in capsys.readouterr().out


@pytest.mark.slow
def test_command_exports_a_program_and_rejects_it_once_tampered(saved_model, tmp_path, capsys):
    output = tmp_path / "segret.pt2"
    assert export_command.main(command(saved_model, "exported-program", output)) == 0
    assert "OK:" in capsys.readouterr().out

    program = torch.export.load(output)
    name = next(name for name in program.state_dict if name.endswith("decode_head.classifier.weight"))
    with torch.no_grad():
        program.state_dict[name].mul_(1.01)
    tampered = tmp_path / "tampered.pt2"
    torch.export.save(program, tampered)
    reloaded_weight = torch.export.load(tampered).state_dict[name]
    assert not torch.equal(reloaded_weight, torch.export.load(output).state_dict[name])  # the change was written
    assert export_command.main(command(saved_model, "exported-program", tampered, "--verify_only")) == 1
    out = capsys.readouterr().out
    assert "FAILED" in out and "| NO |" in out


def test_command_errors_name_the_problem(saved_model, tmp_path, capsys, monkeypatch):
    missing_folder = tmp_path / "no-such-folder" / "segret.pt2"
    assert export_command.main(command(saved_model, "exported-program", missing_folder)) == 2
    assert f"output folder {missing_folder.parent} does not exist" in capsys.readouterr().err

    assert export_command.main(command(tmp_path / "not-a-model", "exported-program", tmp_path / "m.pt2")) == 2
    assert "could not load a SegRet model from" in capsys.readouterr().err

    assert export_command.main(command(saved_model, "exported-program", tmp_path / "absent.pt2", "--verify_only")) == 2
    assert "absent.pt2 does not exist" in capsys.readouterr().err

    with pytest.raises(SystemExit) as exit_info:
        export_command.main(command(saved_model, "tflite", tmp_path / "m.tflite"))
    assert exit_info.value.code == 2
    assert "invalid choice: 'tflite'" in capsys.readouterr().err

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name: None if name == "onnxruntime" else real_find_spec(name)
    )
    assert export_command.main(command(saved_model, "onnx", tmp_path / "m.onnx")) == 2
    error = capsys.readouterr().err
    assert "missing: onnxruntime" in error and "pip install -e '.[export]'" in error


def test_command_module_imports_without_the_onnx_extra():
    """Remote-code safe: no ONNX import at module level (the extra is optional)."""
    code = (
        "import sys\n"
        "for name in ('onnx', 'onnxscript', 'onnxruntime'): sys.modules[name] = None\n"
        "import modeling_segret.export as e\n"
        "print(e.build_parser().prog)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPOSITORY, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "python -m modeling_segret.export" in result.stdout


@pytest.mark.slow
def test_onnx_graph_folds_constants_and_runs_retention_as_attention(onnx_file):
    """Opset 23: every retention call is one `Attention` node (no explicit Softmax); no scatter on the hot path;
    every convolution weight is an initializer (the depth-wise identity and the folded decoder were folded), which
    onnxruntime's quantisers require."""
    import onnx

    graph = onnx.load(onnx_file).graph
    operators = Counter(node.op_type for node in graph.node)
    config = tiny_config()
    retention_calls = sum(
        depth * (2 if mode == "decomposed" else 1) for depth, mode in zip(config.depths, config.retention_modes)
    )
    assert operators["Attention"] == retention_calls
    assert not {"Softmax", "ScatterElements", "ScatterND", "Scatter"} & set(operators)
    # no reversed Slice (the rotation's pair swap is a MatMul): onnxruntime runs it element by element
    constants = {tensor.name: onnx.numpy_helper.to_array(tensor) for tensor in graph.initializer}
    constants |= {
        node.output[0]: onnx.numpy_helper.to_array(node.attribute[0].t)
        for node in graph.node
        if node.op_type == "Constant" and node.attribute[0].name == "value"
    }
    slice_steps = [
        constants.get(node.input[4]) for node in graph.node if node.op_type == "Slice" and len(node.input) > 4
    ]
    assert all(steps is not None and (steps > 0).all() for steps in slice_steps)
    initializers = {tensor.name for tensor in graph.initializer}
    conv_weights = [node.input[1] for node in graph.node if node.op_type == "Conv"]
    assert conv_weights and all(name in initializers for name in conv_weights)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("export_format", "options", "suffix"),
    [
        ("onnx", ["--quantize", "dynamic"], "onnx"),
        ("onnx", ["--quantize", "static"], "onnx"),
        ("onnx", ["--precision", "float16"], "onnx"),
        ("openvino", [], "xml"),
    ],
)
def test_command_writes_quantised_float16_and_openvino_artefacts(
    saved_model, tmp_path, capsys, export_format, options, suffix
):
    """Each variant is written, reloaded and verified by argmax agreement (float32 OpenVINO by the float tolerance)."""
    if not HAS_ONNX or (export_format == "openvino" and importlib.util.find_spec("openvino") is None):
        pytest.skip(f"the packages for --format {export_format} are not installed")
    output = tmp_path / f"segret.{suffix}"
    assert export_command.main(command(saved_model, export_format, output, *options)) == 0
    assert "OK:" in capsys.readouterr().out
    if "--quantize" in options:  # the rotation's pair swaps (permutation matrices) stay float MatMuls
        import onnx

        graph = onnx.load(output).graph
        constants = {tensor.name: onnx.numpy_helper.to_array(tensor) for tensor in graph.initializer}
        swaps = [
            node
            for node in graph.node
            if node.op_type == "MatMul"
            and node.input[1] in constants
            and constants[node.input[1]].ndim == 2
            and export_command.is_permutation(constants[node.input[1]])
        ]
        assert len(swaps) == 2 * sum(tiny_config().depths)  # queries and keys of every block


def test_is_permutation():
    assert export_command.is_permutation(torch.eye(4)[[1, 0, 3, 2]].numpy())
    assert not export_command.is_permutation(torch.eye(4).numpy() * 2)
    assert not export_command.is_permutation(torch.ones(3, 3).numpy())
    assert not export_command.is_permutation(torch.tensor([[1.0, 0.0], [1.0, 0.0]]).numpy())


def test_command_rejects_options_that_do_not_apply(saved_model, tmp_path, capsys):
    cases = [
        (["--quantize", "dynamic"], "exported-program", "--quantize applies to --format onnx"),
        (["--precision", "float16"], "exported-program", "--precision float16 applies to --format onnx and openvino"),
        (["--quantize", "static", "--precision", "float16"], "onnx", "exclude each other"),
        (["--calibration_images", str(tmp_path)], "onnx", "--calibration_images is for --quantize static"),
    ]
    for options, export_format, message in cases:
        if export_format == "onnx" and not HAS_ONNX:
            continue
        assert export_command.main(command(saved_model, export_format, tmp_path / "m.out", *options)) == 2
        assert message in capsys.readouterr().err


@pytest.mark.slow
def test_legacy_onnx_exporter_and_jit_trace_give_working_models(tmp_path):
    """The TorchScript-based paths users may still call: `torch.onnx.export(..., dynamo=False)` with dynamic axes,
    and `torch.jit.trace`, both equal to eager at a size other than the traced one."""
    if not HAS_ONNX:
        pytest.skip("onnxruntime is not installed")
    import onnxruntime

    model = trained_like(SegRetForSemanticSegmentation(tiny_config())).eval()
    wrapped = export_command.SegRetLogits(model).eval()
    example = torch.randn(1, 3, 96, 128)
    path = tmp_path / "legacy.onnx"
    with torch.no_grad():
        torch.onnx.export(
            wrapped,
            (example,),
            str(path),
            dynamo=False,
            input_names=["pixel_values"],
            output_names=["logits"],
            dynamic_axes={"pixel_values": {0: "batch", 2: "height", 3: "width"}},
        )
        traced = torch.jit.trace(wrapped, (example,))
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        for shape in [(1, 3, 96, 128), (2, 3, 64, 160)]:
            pixel_values = torch.randn(*shape)
            expected = model(pixel_values).logits
            legacy = torch.from_numpy(session.run(None, {"pixel_values": pixel_values.numpy()})[0])
            torch.testing.assert_close(legacy, expected, rtol=0, atol=1e-4)
            torch.testing.assert_close(traced(pixel_values), expected, rtol=0, atol=1e-5)
