"""SegRet as a transformers model: shapes, outputs, loss, parameter counts, zero-init, save/load, compile."""

import copy

import pytest
import torch
from conftest import PARAMETER_COUNTS, small_config
from torch import nn
from transformers import AutoBackbone, AutoConfig, AutoModel, AutoModelForSemanticSegmentation

from modeling_segret import (
    SegRetBackbone,
    SegRetConfig,
    SegRetForSemanticSegmentation,
    SegRetModel,
    segret_variant_config,
)
from modeling_segret.modeling_segret import (
    SegRetDepthwiseConv,
    upsample_decoded,
    upsample_linear_by,
    upsampled_cross_entropy,
)


def count(module: nn.Module) -> int:
    return sum(parameter.numel() for parameter in module.parameters())


@pytest.mark.parametrize("variant", list(PARAMETER_COUNTS))
def test_parameter_counts_equal_the_design_document(variant):
    with torch.device("meta"):
        model = SegRetForSemanticSegmentation(segret_variant_config(variant, num_labels=150))
    assert (count(model.segret), count(model.decode_head), count(model)) == PARAMETER_COUNTS[variant]


@pytest.mark.parametrize(("variant", "total"), [("base", 53_029_918), ("large", 95_793_902)])
def test_parameter_counts_without_ffn_depthwise_conv(variant, total):
    with torch.device("meta"):
        model = SegRetForSemanticSegmentation(segret_variant_config(variant, num_labels=150, ffn_depthwise_conv=False))
    assert count(model) == total


def test_shapes_and_outputs(config):
    model = SegRetForSemanticSegmentation(config).eval()
    pixel_values = torch.randn(2, 3, 64, 96)
    outputs = model(pixel_values)
    assert outputs.logits.shape == (2, 5, 16, 24)
    assert outputs.loss is None and outputs.hidden_states is None

    outputs = model(pixel_values, output_hidden_states=True)
    assert [tuple(h.shape) for h in outputs.hidden_states] == [
        (2, 16, 16, 24),
        (2, 16, 16, 24),
        (2, 32, 8, 12),
        (2, 48, 4, 6),
        (2, 64, 2, 3),
    ]
    model.config.output_hidden_states = True
    assert len(model(pixel_values).hidden_states) == 5

    base = SegRetModel(config).eval()
    base_outputs = base(pixel_values, output_hidden_states=True)
    assert base_outputs.last_hidden_state.shape == (2, 64, 2, 3)
    assert torch.equal(base_outputs.hidden_states[-1], base_outputs.last_hidden_state)


def test_tuple_outputs(config):
    model = SegRetForSemanticSegmentation(config).eval()
    pixel_values = torch.randn(1, 3, 32, 32)
    labels = torch.randint(0, 5, (1, 32, 32))
    as_dict = model(pixel_values, labels=labels)
    as_tuple = model(pixel_values, labels=labels, return_dict=False)
    assert isinstance(as_tuple, tuple) and len(as_tuple) == 2
    torch.testing.assert_close(as_tuple[0], as_dict.loss)
    torch.testing.assert_close(as_tuple[1], as_dict.logits)

    model.config.return_dict = False  # SegFormer breaks here in transformers 5.23; SegRet must not
    assert isinstance(model(pixel_values), tuple)
    assert len(model(pixel_values, output_hidden_states=True)) == 2


def test_backbone_api():
    backbone = SegRetBackbone(small_config(out_features=["stage1", "stage2", "stage3", "stage4"])).eval()
    assert backbone.channels == [16, 32, 48, 64]
    maps = backbone(torch.randn(1, 3, 64, 64)).feature_maps
    assert [tuple(m.shape) for m in maps] == [(1, 16, 16, 16), (1, 32, 8, 8), (1, 48, 4, 4), (1, 64, 2, 2)]

    selected = AutoBackbone.from_config(small_config(out_features=["stem", "stage3"])).eval()
    assert isinstance(selected, SegRetBackbone) and selected.channels == [16, 48]
    assert [m.shape[1] for m in selected(torch.randn(1, 3, 64, 64)).feature_maps] == [16, 48]


def test_auto_classes_resolve_to_segret(config, tmp_path):
    SegRetForSemanticSegmentation(config).save_pretrained(tmp_path)
    assert type(AutoConfig.from_pretrained(tmp_path)) is SegRetConfig
    assert type(AutoModel.from_pretrained(tmp_path)) is SegRetModel
    assert type(AutoModelForSemanticSegmentation.from_pretrained(tmp_path)) is SegRetForSemanticSegmentation
    assert type(SegRetBackbone.from_pretrained(tmp_path)) is SegRetBackbone


def test_loss_matches_cross_entropy_at_label_size(config):
    model = SegRetForSemanticSegmentation(config).eval()
    pixel_values = torch.randn(2, 3, 97, 131)  # odd size: logits at ceil(ceil(H/2)/2)
    labels = torch.randint(0, 5, (2, 97, 131))
    labels[0, :10] = 255
    outputs = model(pixel_values, labels=labels)
    assert outputs.logits.shape == (2, 5, 25, 33)
    upsampled = nn.functional.interpolate(outputs.logits, size=(97, 131), mode="bilinear", align_corners=False)
    expected = nn.functional.cross_entropy(upsampled, labels, ignore_index=255)
    torch.testing.assert_close(outputs.loss, expected)

    model.config.loss_average_over_all_pixels = True  # MMSegmentation's avg_non_ignore=False
    valid_fraction = (labels != 255).float().mean()
    torch.testing.assert_close(model(pixel_values, labels=labels).loss, expected * valid_fraction)

    all_ignored = torch.full((2, 97, 131), 255)
    assert model(pixel_values, labels=all_ignored).loss.item() == 0.0


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_loss_gradient_matches_cross_entropy_at_label_size(config, memory_format):
    """The loss runs on channels-last rows of the upsampled logits: same value and gradient as the 4-D form."""
    model = SegRetForSemanticSegmentation(config)
    logits = torch.randn(2, 5, 16, 24, dtype=torch.float64).contiguous(memory_format=memory_format)
    logits.requires_grad_()
    labels = torch.randint(0, 5, (2, 64, 96))
    labels[1, 5:30, 7:50] = 255
    loss = model.compute_loss(logits, labels)
    (gradient,) = torch.autograd.grad(loss, logits)

    reference_logits = logits.detach().contiguous().requires_grad_()
    upsampled = nn.functional.interpolate(reference_logits, size=(64, 96), mode="bilinear", align_corners=False)
    expected = nn.functional.cross_entropy(upsampled, labels, ignore_index=255)
    (expected_gradient,) = torch.autograd.grad(expected, reference_logits)
    torch.testing.assert_close(loss, expected, rtol=1e-12, atol=0)
    torch.testing.assert_close(gradient, expected_gradient, rtol=1e-10, atol=1e-14)


def test_loss_gradient_is_formed_once_and_behaves_as_autograd_would(config):
    """The loss stores its gradient in the forward pass: repeated backward passes, inference without gradients,
    second derivatives and autocast still behave as the autograd chain of interpolate + cross_entropy does."""
    model = SegRetForSemanticSegmentation(config)

    def reference_loss(logits, labels):
        upsampled = nn.functional.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=False)
        return nn.functional.cross_entropy(upsampled, labels, ignore_index=255)

    logits = torch.randn(2, 5, 8, 12, requires_grad=True)
    labels = torch.randint(0, 5, (2, 32, 48))
    labels[0, :4] = 255

    loss = model.compute_loss(logits, labels)
    loss.backward(retain_graph=True)
    first = logits.grad.clone()
    loss.backward()
    torch.testing.assert_close(logits.grad, 2 * first)

    with torch.no_grad():
        torch.testing.assert_close(model.compute_loss(logits, labels), loss.detach())

    # Second derivatives (create_graph=True) are autograd's: the same Hessian-vector product as the reference chain.
    direction = torch.randn_like(logits)
    hessian_vector_products = []
    for loss_function in (model.compute_loss, reference_loss):
        (gradient,) = torch.autograd.grad(loss_function(logits, labels), logits, create_graph=True)
        hessian_vector_products.append(torch.autograd.grad((gradient * direction).sum(), logits)[0])
    torch.testing.assert_close(gradient, first)
    torch.testing.assert_close(*hessian_vector_products)
    assert hessian_vector_products[0].abs().max() > 0

    with torch.autocast("cpu", dtype=torch.bfloat16):
        low_precision_logits = logits.detach().bfloat16().requires_grad_()
        loss = model.compute_loss(low_precision_logits, labels)
        upsampled = nn.functional.interpolate(low_precision_logits, size=(32, 48), mode="bilinear", align_corners=False)
        expected = nn.functional.cross_entropy(upsampled, labels, ignore_index=255)
    assert loss.dtype == expected.dtype == torch.float32
    torch.testing.assert_close(loss, expected)
    (gradient,) = torch.autograd.grad(loss, low_precision_logits)
    assert gradient.dtype == torch.bfloat16
    torch.testing.assert_close(gradient.float(), first, rtol=0, atol=0.01 * first.abs().max().item())


def captured_code(graphs: list[torch.fx.GraphModule]) -> str:
    """The code of graphs recorded by a torch.compile backend, with the subgraphs of higher-order operators (an
    autograd.Function's forward)."""
    return "\n".join(
        module.code for graph in graphs for module in graph.modules() if isinstance(module, torch.fx.GraphModule)
    )


def test_compiled_training_on_cpu_leaves_the_loss_to_aten(config):
    """torch.compile on CPU compiles the model but runs the loss eagerly (inductor's CPU kernels for it were 4x
    slower, BENCHMARKS.md): no captured graph holds the log-softmax or the logits' upsampling to the labels. In a
    training step the decoder's upsampling is captured as slices (`upsample_linear_by`), not `interpolate`, whose
    backward inductor runs element by element on CPU, and the depth-wise convolutions as the operator inductor leaves
    to ATen; without gradients both stay the plain functions."""
    graphs = []

    def recording_backend(graph_module, example_inputs):
        graphs.append(graph_module)
        return graph_module.forward

    model = SegRetForSemanticSegmentation(config).train()
    compiled = torch.compile(model, backend=recording_backend, dynamic=False)
    pixel_values = torch.randn(2, 3, 64, 64)
    labels = torch.randint(0, 5, (2, 64, 64))
    torch.manual_seed(0)  # the same dropout draws in both calls
    loss = compiled(pixel_values, labels=labels).loss
    loss.backward()

    captured = captured_code(graphs)
    assert "scaled_dot_product_attention" in captured  # the model itself is captured
    assert "log_softmax" not in captured and "cross_entropy" not in captured
    assert "interpolate" not in captured
    depthwise_layers = sum(isinstance(module, SegRetDepthwiseConv) for module in model.modules())
    assert captured.count("segret.depthwise_conv_nhwc") == depthwise_layers > 0
    other_convolutions = captured.count("conv2d(")
    torch.manual_seed(0)
    torch.testing.assert_close(loss, model(pixel_values, labels=labels).loss)
    assert all(parameter.grad is not None for parameter in model.parameters() if parameter.requires_grad)

    graphs.clear()
    with torch.no_grad():
        compiled.eval()(pixel_values)
    captured = captured_code(graphs)
    assert "interpolate" in captured
    assert "segret.depthwise_conv_nhwc" not in captured
    assert captured.count("conv2d(") == other_convolutions + depthwise_layers


def test_depthwise_conv_operator_equals_the_convolution():
    """`torch.ops.segret.depthwise_conv_nhwc`, which compiled CPU training calls: the layer's values and gradients
    (float64, identity tap included), a registration torch.library's own checks accept (schema, fake tensors whose
    strides match the kernel's, autograd), and the autocast casts of a convolution."""
    layer = SegRetDepthwiseConv(6, kernel_size=5, residual=True).double()
    hidden_states = torch.randn(2, 7, 9, 6, dtype=torch.float64, requires_grad=True)
    taps = torch.arange(25)
    weight = layer.weight + (taps == 12).to(torch.float64).view(1, 1, 5, 5)
    output_gradient = torch.randn(2, 7, 9, 6, dtype=torch.float64)
    outputs = [layer(hidden_states), torch.ops.segret.depthwise_conv_nhwc(hidden_states, weight, layer.bias)]
    torch.testing.assert_close(outputs[1], outputs[0], rtol=0, atol=1e-14)
    assert outputs[1].is_contiguous()
    gradients = [
        torch.autograd.grad(output, (hidden_states, layer.weight, layer.bias), output_gradient) for output in outputs
    ]
    for operator_gradient, layer_gradient in zip(gradients[1], gradients[0]):
        torch.testing.assert_close(operator_gradient, layer_gradient, rtol=0, atol=1e-12)

    arguments = (
        torch.randn(2, 5, 6, 4, requires_grad=True),
        torch.randn(4, 1, 3, 3, requires_grad=True),
        torch.randn(4, requires_grad=True),
    )
    torch.library.opcheck(torch.ops.segret.depthwise_conv_nhwc.default, arguments)

    layer = SegRetDepthwiseConv(4, kernel_size=3, residual=True)
    weight = layer.weight + (torch.arange(9) == 4).float().view(1, 1, 3, 3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected = layer(arguments[0])
        output = layer.compiled_cpu_training_forward(arguments[0], weight)
    assert output.dtype == expected.dtype == torch.bfloat16
    torch.testing.assert_close(output, expected)


@pytest.mark.parametrize("factor", [1, 2, 3, 4, 8])
def test_upsampling_by_slices_equals_bilinear_interpolation(factor):
    """The decoder's upsampling as compiled for CPU training: values and gradients of `F.interpolate` (bilinear,
    align_corners=False), edges included, also for maps one pixel high."""
    for height, width in [(5, 7), (1, 4), (16, 16)]:
        maps = torch.randn(2, 3, height, width, dtype=torch.float64, requires_grad=True)
        size = (height * factor, width * factor)
        by_slices = upsample_linear_by(upsample_linear_by(maps, 3, factor), 2, factor)
        interpolated = nn.functional.interpolate(maps, size=size, mode="bilinear", align_corners=False)
        torch.testing.assert_close(by_slices, interpolated, rtol=0, atol=1e-14)
        output_gradient = torch.randn_like(interpolated)
        (slices_gradient,) = torch.autograd.grad(by_slices, maps, output_gradient)
        (interpolate_gradient,) = torch.autograd.grad(interpolated, maps, output_gradient)
        torch.testing.assert_close(slices_gradient, interpolate_gradient, rtol=0, atol=1e-13)


def test_upsampling_under_compile_keeps_interpolate_where_the_factor_is_not_an_integer():
    graphs = []

    def recording_backend(graph_module, example_inputs):
        graphs.append(graph_module)
        return graph_module.forward

    compiled = torch.compile(upsample_decoded, backend=recording_backend, fullgraph=True, dynamic=False)
    for size, by_slices in [((32, 48), True), ((31, 47), False)]:
        graphs.clear()
        maps = torch.randn(1, 2, 8, 12, requires_grad=True)
        upsampled = compiled(maps, size)
        code = captured_code(graphs)
        assert ("narrow" in code, "interpolate" in code) == (by_slices, not by_slices)
        reference = nn.functional.interpolate(maps, size=size, mode="bilinear", align_corners=False)
        torch.testing.assert_close(upsampled, reference)


@pytest.mark.slow
def test_compiled_training_step_equals_eager():
    """Inductor's compiled training step on CPU (decoder upsampling as slices, loss outside the graph): the loss and
    every parameter's gradient equal eager's to float32 rounding."""
    model = SegRetForSemanticSegmentation(small_config(drop_path_rate=0.0, decoder_dropout=0.0)).train()
    compiled_model = copy.deepcopy(model)
    compiled = torch.compile(compiled_model, dynamic=False, options={"layout_optimization": False})
    pixel_values = torch.randn(2, 3, 64, 64)
    labels = torch.randint(0, 5, (2, 64, 64))
    compiled_loss = compiled(pixel_values, labels=labels).loss
    compiled_loss.backward()
    eager_loss = model(pixel_values, labels=labels).loss
    eager_loss.backward()
    torch.testing.assert_close(compiled_loss, eager_loss)
    gradients = dict(compiled_model.named_parameters())
    for name, parameter in model.named_parameters():
        torch.testing.assert_close(gradients[name].grad, parameter.grad, rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.slow
def test_loss_compiled_by_inductor_equals_eager():
    """Off the CPU, inductor compiles the loss's autograd function (forward with its in-place gradient, backward):
    the same compilation run here on CPU gives eager's loss and gradient."""
    logits = torch.randn(2, 5, 8, 12, requires_grad=True)
    labels = torch.randint(0, 5, (2, 32, 48))
    labels[1, 3:9] = 255
    compiled_loss = torch.compile(upsampled_cross_entropy, fullgraph=True)(logits, labels, 255)
    (compiled_gradient,) = torch.autograd.grad(compiled_loss, logits)
    eager_loss = upsampled_cross_entropy(logits, labels, 255)
    (eager_gradient,) = torch.autograd.grad(eager_loss, logits)
    torch.testing.assert_close(compiled_loss, eager_loss)
    torch.testing.assert_close(compiled_gradient, eager_gradient)


def test_zero_initialised_residuals_are_a_no_op_at_init(config):
    model = SegRetForSemanticSegmentation(config).eval()
    for residual in model.decode_head.zero_init_residuals:
        assert torch.count_nonzero(residual.weight) == 0 and torch.count_nonzero(residual.bias) == 0

    class Removed(nn.Module):
        def forward(self, stage_map):
            return 0

    model.decode_head.fold = False  # the decoder as written, layer by layer (folding is tested in test_speed_paths)
    without_zir = copy.deepcopy(model)
    without_zir.decode_head.zero_init_residuals = nn.ModuleList(Removed() for _ in range(4))
    pixel_values = torch.randn(2, 3, 64, 64)
    assert torch.equal(model(pixel_values).logits, without_zir(pixel_values).logits)
    model.decode_head.fold = True

    # ... but they learn: the gradient reaches them.
    model.train()
    model(pixel_values, labels=torch.randint(0, 5, (2, 64, 64))).loss.backward()
    assert all(residual.weight.grad.abs().sum() > 0 for residual in model.decode_head.zero_init_residuals)


def test_save_load_round_trip_keeps_logits_and_buffers(config, tmp_path):
    model = SegRetForSemanticSegmentation(config)
    model.train()
    for _ in range(2):  # move the BatchNorm statistics away from their initial values
        model(torch.randn(2, 3, 64, 64))
    model.eval()
    model.save_pretrained(tmp_path)
    reloaded = AutoModelForSemanticSegmentation.from_pretrained(tmp_path).eval()

    pixel_values = torch.randn(1, 3, 64, 80)
    # Equal up to float rounding: CPU kernels may take another path for differently aligned (loaded) weights.
    torch.testing.assert_close(model(pixel_values).logits, reloaded(pixel_values).logits, rtol=0, atol=1e-6)
    original_buffers = dict(model.named_buffers())
    for name, buffer in reloaded.named_buffers():
        assert torch.equal(buffer, original_buffers[name]), name


def test_bfloat16_load_and_forward(config, tmp_path):
    model = SegRetForSemanticSegmentation(config).eval()
    model.save_pretrained(tmp_path)
    bf16 = AutoModelForSemanticSegmentation.from_pretrained(tmp_path, dtype=torch.bfloat16).eval()
    assert all(p.dtype == torch.bfloat16 for p in bf16.parameters())
    pixel_values = torch.randn(1, 3, 64, 64)
    logits = bf16(pixel_values.bfloat16()).logits
    assert logits.dtype == torch.bfloat16 and torch.isfinite(logits).all()
    reference = model(pixel_values).logits
    assert (logits.float() - reference).abs().max() < 0.1 * reference.abs().max()


def test_gradient_checkpointing_gives_same_loss_and_gradients(config):
    model = SegRetForSemanticSegmentation(config).train()
    pixel_values = torch.randn(2, 3, 64, 64)
    labels = torch.randint(0, 5, (2, 64, 64))

    def loss_and_gradients(seed):
        model.zero_grad()
        torch.manual_seed(seed)  # same drop-path and dropout draws in both runs
        loss = model(pixel_values, labels=labels).loss
        loss.backward()
        return loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}

    reference_loss, reference_gradients = loss_and_gradients(1)
    model.gradient_checkpointing_enable()
    assert any(getattr(m, "gradient_checkpointing", False) for m in model.modules())
    loss, gradients = loss_and_gradients(1)
    torch.testing.assert_close(loss, reference_loss, rtol=0, atol=0)
    assert gradients.keys() == reference_gradients.keys()
    for name, gradient in gradients.items():
        torch.testing.assert_close(gradient, reference_gradients[name], msg=name)


def test_batch_equals_items_run_one_by_one(config):
    model = SegRetForSemanticSegmentation(config).eval()
    pixel_values = torch.randn(3, 3, 48, 64)
    batched = model(pixel_values).logits
    for index in range(3):
        torch.testing.assert_close(
            batched[index : index + 1], model(pixel_values[index : index + 1]).logits, rtol=1e-5, atol=1e-5
        )


@pytest.mark.slow
def test_torch_compile_runs_and_matches_eager(config):
    # dynamic=False, as docs/deployment.md says: with dynamic shapes (also torch.compile's automatic ones after a second
    # size) inductor 2.13 fails to lower the convolutions (ValueRangeError); static shapes recompile per size.
    model = SegRetForSemanticSegmentation(config).eval()
    compiled = torch.compile(model, fullgraph=True, dynamic=False)
    for height, width in [(64, 64), (64, 96)]:
        pixel_values = torch.randn(1, 3, height, width)
        torch.testing.assert_close(compiled(pixel_values).logits, model(pixel_values).logits, rtol=1e-4, atol=1e-4)


def test_bad_inputs_raise_clear_errors(config):
    model = SegRetForSemanticSegmentation(config).eval()
    with pytest.raises(ValueError, match=r"has 1 channels but the model expects 3"):
        model(torch.randn(1, 1, 32, 32))
    with pytest.raises(ValueError, match=r"must be a 4-D tensor .* got shape \(3, 32, 32\)"):
        model(torch.randn(3, 32, 32))
    with pytest.raises(ValueError, match=r"floating-point"):
        model(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))
    labels = torch.zeros(1, 32, 32, dtype=torch.long)
    labels[0, 0, 0] = 7
    labels[0, 0, 1] = -1
    with pytest.raises(ValueError, match=r"labels contain \[-1, 7\] which are neither a class index in \[0, 5\)"):
        model(torch.randn(1, 3, 32, 32), labels=labels)
    with pytest.raises(ValueError, match=r"labels must have shape \(batch_size, height, width\)"):
        model(torch.randn(1, 3, 32, 32), labels=torch.zeros(1, 1, 32, 32, dtype=torch.long))
    with pytest.raises(ValueError, match=r"integer tensor"):
        model(torch.randn(1, 3, 32, 32), labels=torch.zeros(1, 32, 32))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"num_heads": [3, 2, 4, 4]}, r"Stage 0: num_heads=3 must divide embed_dims=16"),
        ({"embed_dims": [18, 32, 48, 64], "num_heads": [6, 2, 4, 4]}, r"Stage 0: head size .* = 3 must be even"),
        ({"depths": [1, 2, 2]}, r"one entry per stage \(len\(depths\) = 3\)"),
        ({"retention_modes": ["chunk", "decomposed", "global", "global"]}, r"Stage 0: unknown retention mode 'chunk'"),
        ({"drop_path_rate": 1.0}, r"drop_path_rate must be in \[0, 1\)"),
        ({"decoder_hidden_size": 0}, r"decoder_hidden_size must be >= 1"),
        ({"mlp_ratios": [3.0, 0.0, 3.0, 3.0]}, r"Stage 1: mlp_ratios must be > 0"),
    ],
)
def test_invalid_config_values_raise(overrides, message):
    with pytest.raises(Exception, match=message):
        small_config(**overrides)


def test_config_type_errors_are_caught():
    with pytest.raises(Exception, match="depths"):
        SegRetConfig(depths="2,2,8,2")


# ------------------------------------------------------------------- attention options (attn_implementation, weights)


def test_sdpa_is_the_default_and_eager_loads_on_request(config, tmp_path):
    model = SegRetForSemanticSegmentation(config).eval()
    assert model.config._attn_implementation == "sdpa"
    model.save_pretrained(tmp_path)
    for implementation in ("sdpa", "eager"):
        loaded = SegRetForSemanticSegmentation.from_pretrained(tmp_path, attn_implementation=implementation)
        assert loaded.config._attn_implementation == implementation
    assert SegRetForSemanticSegmentation.from_pretrained(tmp_path).config._attn_implementation == "sdpa"


def test_eager_attention_equals_sdpa_and_returns_the_weights(config):
    """In float64 the explicit path (softmax of the scores plus the decay mask) gives SDPA's logits; with
    output_attentions=True it returns one entry per block, shaped as documented, rows summing to one."""
    torch.manual_seed(0)
    model = SegRetForSemanticSegmentation(config).double().eval()
    eager = copy.deepcopy(model)
    eager.config._attn_implementation = "eager"
    pixel_values = torch.randn(2, 3, 64, 96, dtype=torch.float64)
    with torch.no_grad():
        expected = model(pixel_values).logits
        torch.testing.assert_close(eager(pixel_values).logits, expected, rtol=0, atol=1e-10)
        outputs = model(pixel_values, output_attentions=True)
    torch.testing.assert_close(outputs.logits, expected, rtol=0, atol=1e-10)
    assert model(pixel_values).attentions is None

    # small_config: stages of 16×24, 8×12, 4×6, 2×3 tokens; decomposed, decomposed, global, global; 2, 2, 4, 4 heads
    expected_shapes = []
    for (height, width), heads, mode, depth in zip(
        [(16, 24), (8, 12), (4, 6), (2, 3)], config.num_heads, config.retention_modes, config.depths
    ):
        if mode == "global":
            shape = (2, heads, height * width, height * width)
        else:
            shape = ((2, height, heads, width, width), (2, width, heads, height, height))
        expected_shapes += [shape] * depth
    shapes = [
        tuple(weights.shape) if torch.is_tensor(weights) else tuple(tuple(w.shape) for w in weights)
        for weights in outputs.attentions
    ]
    assert shapes == expected_shapes
    for weights in outputs.attentions:
        for tensor in (weights,) if torch.is_tensor(weights) else weights:
            torch.testing.assert_close(tensor.sum(-1), torch.ones_like(tensor.sum(-1)), rtol=0, atol=1e-12)

    backbone_outputs = model.segret(pixel_values, output_attentions=True)
    assert len(backbone_outputs.attentions) == sum(config.depths)
    backbone = SegRetBackbone(config).eval()
    assert len(backbone(pixel_values.float(), output_attentions=True).attentions) == sum(config.depths)


def test_attention_weights_are_the_manhattan_decay_when_queries_and_keys_vanish(config):
    """With zero query and key projections every score is 0, so a global block's weights are softmax over keys of
    the decay mask: log(gamma_n) * (|r - r'| + |c - c'|) with gamma_n = 1 - 2^(-init - range * n / N)."""
    model = SegRetForSemanticSegmentation(config).double().eval()
    stage_index = config.retention_modes.index("global")
    block = model.segret.encoder.stages[stage_index].blocks[0]
    with torch.no_grad():
        for projection in (block.retention.q_proj, block.retention.k_proj):
            projection.weight.zero_()
            projection.bias.zero_()
        weights = model(torch.randn(1, 3, 64, 96, dtype=torch.float64), output_attentions=True).attentions
    height, width = 64 // 2 ** (stage_index + 2), 96 // 2 ** (stage_index + 2)
    rows, columns = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    rows, columns = rows.flatten().double(), columns.flatten().double()
    distance = (rows[:, None] - rows[None, :]).abs() + (columns[:, None] - columns[None, :]).abs()
    num_heads = config.num_heads[stage_index]
    heads = torch.arange(num_heads, dtype=torch.float64)
    exponent = -config.decay_init_values[stage_index] - config.decay_head_ranges[stage_index] * heads / num_heads
    log_gamma = torch.log(1 - 2**exponent)
    expected = (log_gamma[:, None, None] * distance).softmax(-1)
    global_entry = sum(config.depths[:stage_index])
    torch.testing.assert_close(weights[global_entry][0], expected, rtol=0, atol=1e-6)  # base tables are float32


@pytest.mark.parametrize("model_class", [SegRetForSemanticSegmentation, SegRetModel, SegRetBackbone])
def test_unknown_forward_arguments_raise_a_type_error_naming_them(config, model_class):
    model = model_class(config).eval()
    pixel_values = torch.randn(1, 3, 32, 32)
    with pytest.raises(TypeError, match=r"'label'.*, 'output_attention' \(did you mean 'output_attentions'\?\)"):
        model(pixel_values, label=torch.zeros(1, 32, 32, dtype=torch.long), output_attention=True)
    if model_class is SegRetForSemanticSegmentation:
        with pytest.raises(TypeError, match=r"'label' \(did you mean 'labels'\?\)"):
            model(pixel_values, label=torch.zeros(1, 32, 32, dtype=torch.long))
    with pytest.raises(TypeError, match="unexpected keyword argument"):
        model(pixel_values, colour="red")
    assert isinstance(model(pixel_values, return_dict=False), tuple)  # transformers' own keyword still works
