"""Every fused, cached and folded path of the model equals the formulation it replaces.

The oracle is `benchmarks/official_rmt.py`: the official RMT/SegRet forward (5-D tensors, explicit `q @ k.T + mask`,
softmax, tables recomputed per stage call, decoder unfolded) run on the model's own weights.
"""

import contextlib
import copy

import pytest
import torch
import torch.nn.functional as F
from conftest import small_config
from safetensors.torch import load_file
from test_parity import REFERENCE, reference_config

from benchmarks.official_rmt import OfficialRMTBackbone, OfficialSegRet
from modeling_segret import SegRetBackbone, SegRetForSemanticSegmentation
from modeling_segret.convert_rmt_checkpoint import convert_rmt_state_dict


def trained_like(model: SegRetForSemanticSegmentation) -> SegRetForSemanticSegmentation:
    """Non-zero ZIR weights, non-trivial BatchNorm statistics and affine parameters, so that folding is exercised."""
    with torch.no_grad():
        for residual in model.decode_head.zero_init_residuals:
            residual.weight.normal_(0, 0.1)
            residual.bias.normal_(0, 0.1)
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.normal_(0, 0.2)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0, 0.1)
    return model


def relative_error(value: torch.Tensor, reference: torch.Tensor) -> float:
    return ((value - reference).abs().max() / reference.abs().max()).item()


def stage_positions(model):
    return [stage.relative_position for stage in model.segret.encoder.stages]


# ------------------------------------------------------------------------------------------------ the oracle itself


@pytest.mark.parametrize("input_index", [0, 1])
def test_oracle_reproduces_the_official_code(input_index):
    """The official-formulation oracle gives the official RMT outputs stored in the parity fixture."""
    tensors = load_file(REFERENCE)
    weights = {key.removeprefix("weights."): value for key, value in tensors.items() if key.startswith("weights.")}
    backbone = SegRetBackbone(reference_config()).double().eval()
    backbone.load_state_dict(convert_rmt_state_dict(weights, backbone.config))
    with torch.no_grad():
        outputs = OfficialRMTBackbone(backbone.encoder)(tensors[f"input{input_index}"])
    for stage, output in enumerate(outputs):
        torch.testing.assert_close(output, tensors[f"input{input_index}.out{stage}"], rtol=0, atol=1e-10)


# ------------------------------------------------------------------------------- fused retention and folded decoder


@pytest.mark.parametrize("shape", [(2, 3, 64, 96), (1, 3, 97, 45)])
def test_inference_equals_official_formulation_in_float64(shape):
    """Fused attention, cached tables and the folded decoder: the official formulation to 1e-10 in float64."""
    model = trained_like(SegRetForSemanticSegmentation(small_config())).double().eval()
    pixel_values = torch.randn(shape, dtype=torch.float64)
    with torch.no_grad():
        expected = OfficialSegRet(model)(pixel_values)
        torch.testing.assert_close(model(pixel_values).logits, expected, rtol=0, atol=1e-10)
    with torch.inference_mode():
        torch.testing.assert_close(model(pixel_values).logits, expected, rtol=0, atol=1e-10)


@contextlib.contextmanager
def decoder_as_written(model: SegRetForSemanticSegmentation):
    """Runs the decoder layer by layer, unfolded, inside the block."""
    model.decode_head.fold = False
    try:
        yield model
    finally:
        model.decode_head.fold = True


def test_folded_decoder_within_1e_5_of_unfolded_in_float32():
    model = trained_like(SegRetForSemanticSegmentation(small_config(decoder_hidden_size=64))).eval()
    pixel_values = torch.randn(2, 3, 128, 96)
    with torch.inference_mode():
        with decoder_as_written(model):
            unfolded = model(pixel_values).logits
        folded = model(pixel_values).logits
        official = OfficialSegRet(model)(pixel_values)
    assert relative_error(folded, unfolded) < 1e-5
    assert relative_error(folded, official) < 1e-5


def test_folded_decoder_follows_weight_and_statistics_changes():
    """Folded weights come from the current parameters and BatchNorm statistics at every call: never stale."""
    model = trained_like(SegRetForSemanticSegmentation(small_config())).double().eval()
    pixel_values = torch.randn(1, 3, 64, 64, dtype=torch.float64)
    with torch.no_grad():
        before = model(pixel_values).logits
        head = model.decode_head
        head.fuse.weight.mul_(1.5)  # an optimizer step would do the same, in place
        head.batch_norm.running_var.add_(0.5)
        head.zero_init_residuals[2].weight.normal_()
        after = model(pixel_values).logits
        state = copy.deepcopy(model.state_dict())
        state["decode_head.linear_projections.0.weight"].normal_()
        model.load_state_dict(state)
        reloaded = model(pixel_values).logits
        assert not torch.allclose(before, after) and not torch.allclose(after, reloaded)
        torch.testing.assert_close(reloaded, OfficialSegRet(model)(pixel_values), rtol=0, atol=1e-10)
        with decoder_as_written(model):
            torch.testing.assert_close(reloaded, model(pixel_values).logits, rtol=0, atol=1e-10)


def training_step(model, pixel_values, labels, seed=0):
    """Loss, parameter gradients and buffers after one forward/backward (dropout and drop-path seeded)."""
    model.zero_grad()
    torch.manual_seed(seed)
    loss = model(pixel_values, labels=labels).loss
    loss.backward()
    gradients = {name: parameter.grad.clone() for name, parameter in model.named_parameters()}
    buffers = {name: buffer.clone() for name, buffer in model.named_buffers()}
    return loss.detach(), gradients, buffers


@pytest.mark.parametrize("training", [True, False], ids=["train-mode", "eval-mode"])
def test_folded_decoder_trains_like_the_decoder_as_written(training):
    """Loss, every parameter's gradient (ZIR, fuse, BatchNorm included) and the BatchNorm running statistics equal
    those of the layer-by-layer decoder: batch statistics in train mode, running statistics folded in eval mode."""
    config = small_config(decoder_dropout=0.1, drop_path_rate=0.1)
    model = trained_like(SegRetForSemanticSegmentation(config)).double().train(training)
    pixel_values = torch.randn(2, 3, 64, 96, dtype=torch.float64)
    labels = torch.randint(0, config.num_labels, (2, 64, 96))
    running_mean_before = model.decode_head.batch_norm.running_mean.clone()
    reference_model = copy.deepcopy(model)
    with decoder_as_written(reference_model):
        expected_loss, expected_gradients, expected_buffers = training_step(reference_model, pixel_values, labels)
    loss, gradients, buffers = training_step(model, pixel_values, labels)

    torch.testing.assert_close(loss, expected_loss, rtol=1e-12, atol=0)
    decoder_gradients = [name for name in gradients if name.startswith("decode_head.")]
    assert {"decode_head.zero_init_residuals.0.weight", "decode_head.fuse.weight"} <= set(decoder_gradients)
    for name, gradient in gradients.items():
        assert gradient.abs().max() > 0, name
        torch.testing.assert_close(gradient, expected_gradients[name], rtol=1e-9, atol=1e-12, msg=name)
    for name, buffer in buffers.items():
        torch.testing.assert_close(buffer, expected_buffers[name], rtol=1e-12, atol=1e-12, msg=name)
    if training:  # the running statistics moved, identically in both
        assert not torch.equal(buffers["decode_head.batch_norm.running_mean"], running_mean_before)


def test_bfloat16_folding_keeps_precision():
    """The fold is computed in float32 and rounded once, so bf16 folded ≈ bf16 unfolded."""
    model = trained_like(SegRetForSemanticSegmentation(small_config())).eval()
    pixel_values = torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        reference = model(pixel_values).logits
        bf16 = model.to(torch.bfloat16)
        folded = bf16(pixel_values.bfloat16()).logits.float()
        with decoder_as_written(bf16):
            unfolded = bf16(pixel_values.bfloat16()).logits.float()
    assert relative_error(folded, reference) < 0.05
    assert relative_error(folded, reference) < 2 * relative_error(unfolded, reference) + 0.01


# -------------------------------------------------------------------------------------- global retention per row


def test_global_retention_per_row_views_equal_the_dense_mask(monkeypatch):
    """Large maps use per-row views of a block-Toeplitz table instead of the (N, L, L) mask: same values."""
    model = trained_like(SegRetForSemanticSegmentation(small_config())).double().eval()
    pixel_values = torch.randn(2, 3, 96, 128, dtype=torch.float64)
    with torch.no_grad():
        dense = model(pixel_values).logits
        positions = stage_positions(model)
        for position in positions:
            position._cached_tables.clear()
            monkeypatch.setattr(position, "max_dense_mask_elements", 0)
        per_row = model(pixel_values).logits
        official = OfficialSegRet(model)(pixel_values)
    tables = positions[2].compute_tables(6, 8, torch.float64, torch.device("cpu"))
    assert len(tables.decay_masks) == 6 and tables.decay_masks[0].shape == (1, 4, 8, 48)
    torch.testing.assert_close(
        torch.cat(tables.decay_masks, dim=2), dense_global_mask(positions[2], 6, 8), rtol=0, atol=0
    )
    torch.testing.assert_close(per_row, dense, rtol=0, atol=1e-12)
    torch.testing.assert_close(per_row, official, rtol=0, atol=1e-10)


def dense_global_mask(position, height, width):
    rows = torch.arange(height, dtype=torch.float64).repeat_interleave(width)
    cols = torch.arange(width, dtype=torch.float64).repeat(height)
    distance = (rows[:, None] - rows[None, :]).abs() + (cols[:, None] - cols[None, :]).abs()
    _, decay = position.base_tables()
    return (distance * decay.double()[:, None, None])[None]


def test_global_retention_per_row_gradients_equal_dense(monkeypatch):
    config = small_config(drop_path_rate=0.0, decoder_dropout=0.0)
    model = SegRetForSemanticSegmentation(config).double().train()
    pixel_values = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    labels = torch.randint(0, 5, (2, 64, 64))

    def gradients():
        model.zero_grad()
        model(pixel_values, labels=labels).loss.backward()
        return {name: p.grad.clone() for name, p in model.named_parameters()}

    dense = gradients()
    for position in stage_positions(model):
        position._cached_tables.clear()
        monkeypatch.setattr(position, "max_dense_mask_elements", 0)
    per_row = gradients()
    for name, gradient in per_row.items():
        torch.testing.assert_close(gradient, dense[name], rtol=1e-9, atol=1e-12, msg=name)


# ---------------------------------------------------------------------------------------- position table cache


def test_tables_are_cached_per_size_dtype_and_device():
    model = SegRetForSemanticSegmentation(small_config()).eval()
    position = stage_positions(model)[0]
    cpu = torch.device("cpu")
    first = position(8, 12, torch.float32, cpu)
    assert position(8, 12, torch.float32, cpu) is first
    assert position(12, 8, torch.float32, cpu) is not first
    in_float64 = position(8, 12, torch.float64, cpu)
    assert in_float64.rotation.dtype == torch.complex128 and in_float64.decay_masks[0].dtype == torch.float64
    on_meta = position(8, 12, torch.float32, torch.device("meta"))
    assert on_meta.rotation.device.type == "meta"
    assert set(position._cached_tables) == {
        (8, 12, torch.float32, cpu),
        (12, 8, torch.float32, cpu),
        (8, 12, torch.float64, cpu),
        (8, 12, torch.float32, torch.device("meta")),
    }
    for size in range(position.max_cached_sizes + 2):  # least recently used sizes are evicted
        position(4, 4 + size, torch.float32, cpu)
    assert len(position._cached_tables) == position.max_cached_sizes
    assert (4, 4 + position.max_cached_sizes + 1, torch.float32, cpu) in position._cached_tables


def test_cached_tables_follow_the_model_dtype():
    model = SegRetForSemanticSegmentation(small_config()).eval()
    pixel_values = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        model(pixel_values)
        model.double()
        expected = OfficialSegRet(model)(pixel_values.double())
        torch.testing.assert_close(model(pixel_values.double()).logits, expected, rtol=0, atol=1e-10)


def test_tables_cached_under_inference_mode_serve_training():
    """Tables are built outside inference mode, so a training step after an inference call can save them."""
    config = small_config(drop_path_rate=0.0, decoder_dropout=0.0)
    model = SegRetForSemanticSegmentation(config).train()
    fresh = copy.deepcopy(model)
    pixel_values = torch.randn(2, 3, 64, 64)
    labels = torch.randint(0, 5, (2, 64, 64))
    with torch.inference_mode():
        model.eval()(pixel_values)
    model.train()
    model(pixel_values, labels=labels).loss.backward()
    fresh(pixel_values, labels=labels).loss.backward()
    for (name, parameter), fresh_parameter in zip(model.named_parameters(), fresh.parameters()):
        torch.testing.assert_close(parameter.grad, fresh_parameter.grad, rtol=0, atol=0, msg=name)


def test_no_new_state_and_caches_start_empty_after_from_pretrained(tmp_path):
    model = SegRetForSemanticSegmentation(small_config()).eval()
    with torch.no_grad():
        model(torch.randn(1, 3, 64, 64))
    assert all(position._cached_tables for position in stage_positions(model))
    buffers = {name for name, _ in model.named_buffers()}
    assert all(name.rsplit(".", 1)[1] in {"running_mean", "running_var", "num_batches_tracked"} for name in buffers)
    assert set(model.state_dict()) == {name for name, _ in model.named_parameters()} | buffers

    model.save_pretrained(tmp_path)
    reloaded = SegRetForSemanticSegmentation.from_pretrained(tmp_path).eval()  # built on the meta device
    assert not any(position._cached_tables for position in stage_positions(reloaded))
    pixel_values = torch.randn(1, 3, 64, 80)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(pixel_values).logits, model(pixel_values).logits, rtol=0, atol=0)


# ------------------------------------------------------------------------------------------------------ training


def test_training_gradients_equal_official_formulation():
    """Forward and backward through the fused paths give the official formulation's loss and gradients."""
    config = small_config(drop_path_rate=0.0, decoder_dropout=0.0)
    model = trained_like(SegRetForSemanticSegmentation(config)).double().train()
    pixel_values = torch.randn(2, 3, 64, 96, dtype=torch.float64)
    labels = torch.randint(0, 5, (2, 64, 96))

    def loss_and_gradients(logits_function):
        model.zero_grad()
        logits = logits_function(pixel_values)
        upsampled = F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=False)
        loss = F.cross_entropy(upsampled, labels)
        loss.backward()
        return loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters()}

    batch_norms = [module for module in model.modules() if isinstance(module, torch.nn.BatchNorm2d)]
    statistics = [(bn.running_mean.clone(), bn.running_var.clone()) for bn in batch_norms]
    loss, gradients = loss_and_gradients(lambda x: model(x).logits)
    for bn, (mean, var) in zip(batch_norms, statistics):  # the same batch-statistics update in both runs
        bn.running_mean.copy_(mean)
        bn.running_var.copy_(var)
    official_loss, official_gradients = loss_and_gradients(OfficialSegRet(model))
    torch.testing.assert_close(loss, official_loss, rtol=0, atol=1e-12)
    for name, gradient in gradients.items():
        torch.testing.assert_close(gradient, official_gradients[name], rtol=1e-8, atol=1e-12, msg=name)


def test_compiled_inference_with_folded_decoder_matches_eager():
    model = trained_like(SegRetForSemanticSegmentation(small_config())).eval()
    pixel_values = torch.randn(1, 3, 64, 64)
    compiled = torch.compile(model, fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(compiled(pixel_values).logits, model(pixel_values).logits, rtol=1e-4, atol=1e-4)
