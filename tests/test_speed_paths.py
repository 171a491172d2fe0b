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
from modeling_segret.modeling_segret import SegRetRelativePosition, SegRetStage


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


@pytest.mark.slow
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


@pytest.mark.slow
@pytest.mark.parametrize("shape", [(2, 3, 64, 96), (1, 3, 97, 45)])
def test_inference_equals_official_formulation_in_float64(shape):
    """Fused attention, position tables and the folded decoder: the official formulation to 1e-10 in float64."""
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


# ------------------------------------------------------------------------------- global retention: one strided mask


def test_global_mask_view_holds_the_dense_mask_without_materialising_it():
    """The (H, B*N, W, H*W) mask of the global mode is a view of a table linear in the tokens per key row, and holds
    the dense Manhattan mask: query row r = H - 1 - s of image b, head n, column c against every key."""
    position = stage_positions(SegRetForSemanticSegmentation(small_config()))[2]
    batch_size, height, width, num_heads = 2, 6, 8, position.num_heads
    tables = position(batch_size, height, width, torch.float64, torch.device("cpu"))
    (mask,) = tables.decay_masks
    assert mask.shape == (height, batch_size * num_heads, width, height * width)
    table_elements = batch_size * num_heads * width * (2 * height - 1) * width
    assert mask.untyped_storage().nbytes() == table_elements * mask.element_size() < mask.numel() * mask.element_size()
    dense = dense_global_mask(position, height, width)[0]  # (N, H*W, H*W)
    # (H reversed, B, N, W, H*W) -> (B, N, H*W, H*W)
    unfolded = (
        mask.unflatten(1, (batch_size, num_heads))
        .flip(0)
        .permute(1, 2, 0, 3, 4)
        .reshape(batch_size, num_heads, -1, height * width)
    )
    for image in range(batch_size):
        torch.testing.assert_close(unfolded[image], dense, rtol=0, atol=0)
    assert tables.rotation.shape == (height, width, 1, position.head_dim // 2, 2)
    assert tables.rotation.dtype == torch.float64


def dense_global_mask(position, height, width):
    rows = torch.arange(height, dtype=torch.float64).repeat_interleave(width)
    cols = torch.arange(width, dtype=torch.float64).repeat(height)
    distance = (rows[:, None] - rows[None, :]).abs() + (cols[:, None] - cols[None, :]).abs()
    _, decay = position.base_tables()
    return (distance * decay.double()[:, None, None])[None]


@pytest.mark.slow
@pytest.mark.parametrize("batch_size", [1, 3])
def test_global_retention_equals_official_formulation_at_any_batch_and_odd_sizes(batch_size):
    """One path for every batch size and map shape (odd, wide, tall), float64 to 1e-10."""
    model = trained_like(SegRetForSemanticSegmentation(small_config())).double().eval()
    for height, width in [(97, 45), (40, 160)]:
        pixel_values = torch.randn(batch_size, 3, height, width, dtype=torch.float64)
        with torch.no_grad():
            expected = OfficialSegRet(model)(pixel_values)
            torch.testing.assert_close(model(pixel_values).logits, expected, rtol=0, atol=1e-10)


# ------------------------------------------------------------------------------------------------- position tables


def test_global_stages_take_the_dense_mask_only_with_gradients_and_where_it_is_smaller():
    """The dense mask (N * (HW)^2 values) replaces the strided one in eager calls with gradients when it is no larger
    than the key and value gradients the strided form's backward materialises (2 * H * B * N * HW * d values)."""
    model = SegRetForSemanticSegmentation(small_config())
    decomposed, global_stage = model.segret.encoder.stages[1], model.segret.encoder.stages[2]
    head_dim = global_stage.relative_position.head_dim
    with torch.enable_grad():
        assert global_stage.dense_mask_is_cheaper(batch_size=1, width=2 * head_dim)
        assert not global_stage.dense_mask_is_cheaper(batch_size=1, width=2 * head_dim + 1)
        assert global_stage.dense_mask_is_cheaper(batch_size=2, width=2 * head_dim + 1)
        assert not decomposed.dense_mask_is_cheaper(batch_size=2, width=4)
    with torch.no_grad():
        assert not global_stage.dense_mask_is_cheaper(batch_size=2, width=4)

    seen = []
    original = SegRetRelativePosition.forward

    def recording(position, *args, **kwargs):
        tables = original(position, *args, **kwargs)
        if position.mode == "global":
            seen.append(tables.decay_masks[0].shape)
        return tables

    pixel_values = torch.randn(1, 3, 64, 96)  # stage 3: 4 x 6 tokens
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(SegRetRelativePosition, "forward", recording)
        model(pixel_values)
        with torch.no_grad():
            model(pixel_values)
    tokens = 4 * 6
    heads = global_stage.relative_position.num_heads
    assert seen[0] == (1, heads, tokens, tokens)  # with gradients: dense
    assert seen[2] == (4, heads, 6, tokens)  # without: the strided (H, B*N, W, H*W) view


def test_tables_follow_the_model_dtype_and_device():
    position = stage_positions(SegRetForSemanticSegmentation(small_config()))[0]
    in_float64 = position(1, 8, 12, torch.float64, torch.device("cpu"))
    assert in_float64.rotation.dtype == torch.float64 and in_float64.decay_masks[0].dtype == torch.float64
    in_bfloat16 = position(1, 8, 12, torch.bfloat16, torch.device("cpu"))  # angles kept in float32
    assert in_bfloat16.rotation.dtype == torch.float32 and in_bfloat16.decay_masks[0].dtype == torch.bfloat16
    on_meta = position(1, 8, 12, torch.float32, torch.device("meta"))
    assert on_meta.rotation.device.type == "meta"


def test_model_follows_a_dtype_change_after_a_call():
    model = SegRetForSemanticSegmentation(small_config()).eval()
    pixel_values = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        model(pixel_values)
        model.double()
        expected = OfficialSegRet(model)(pixel_values.double())
        torch.testing.assert_close(model(pixel_values.double()).logits, expected, rtol=0, atol=1e-10)


def test_inference_mode_call_then_training_step():
    """Nothing made under `torch.inference_mode` is reused by a later training step."""
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


def test_no_new_state_after_from_pretrained(tmp_path):
    model = SegRetForSemanticSegmentation(small_config()).eval()
    buffers = {name for name, _ in model.named_buffers()}
    assert all(name.rsplit(".", 1)[1] in {"running_mean", "running_var", "num_batches_tracked"} for name in buffers)
    assert set(model.state_dict()) == {name for name, _ in model.named_parameters()} | buffers

    model.save_pretrained(tmp_path)
    reloaded = SegRetForSemanticSegmentation.from_pretrained(tmp_path).eval()  # built on the meta device
    pixel_values = torch.randn(1, 3, 64, 80)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(pixel_values).logits, model(pixel_values).logits, rtol=0, atol=1e-6)


# ------------------------------------------------------------------------------------------------------ training


@pytest.mark.slow
@pytest.mark.parametrize("global_mask", ["dense", "strided"])
def test_training_gradients_equal_official_formulation(global_mask, monkeypatch):
    """Forward and backward through the fused paths give the official formulation's loss and gradients, with either
    form of the global mask (training takes the dense one where it is the smaller, `dense_mask_is_cheaper`)."""
    dense = global_mask == "dense"
    monkeypatch.setattr(SegRetStage, "dense_mask_is_cheaper", lambda stage, batch_size, width: dense)
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


@pytest.mark.slow
def test_compiled_inference_with_folded_decoder_matches_eager():
    model = trained_like(SegRetForSemanticSegmentation(small_config())).eval()
    pixel_values = torch.randn(1, 3, 64, 64)
    compiled = torch.compile(model, fullgraph=True, dynamic=False)
    with torch.no_grad():
        torch.testing.assert_close(compiled(pixel_values).logits, model(pixel_values).logits, rtol=1e-4, atol=1e-4)
