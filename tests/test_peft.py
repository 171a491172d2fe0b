"""PEFT's LoRA on SegRet (docs/peft.md): adapters on any linear layer or 1×1 convolution, backbone and decoder, train,
save, reload and merge to the logits of the trained model, with the BatchNorm statistics handled by the documented
recipe."""

import copy

import pytest
import torch
from conftest import small_config
from peft import LoraConfig, PeftModel, get_peft_model
from torch import nn

from modeling_segret import SegRetForSemanticSegmentation

# Every linear layer of the backbone and every 1×1 convolution of the decoder (the backbone has none; its 3×3 stem,
# downsampling and depth-wise convolutions are left out).
EVERY_LINEAR_AND_POINTWISE = (
    r".*\.(q_proj|k_proj|v_proj|out_proj|fc1|fc2)"
    r"|.*decode_head\.(linear_projections\.\d+|zero_init_residuals\.\d+|fuse|classifier)"
)
DECODER_PROJECTIONS = r".*decode_head\.linear_projections\.\d+"
# The recipe of docs/peft.md: the BatchNorm layers (stem, downsampling, decoder) are saved with the adapter.
BATCH_NORMS = ["normalization", "batch_norm"]

# `get_peft_model` reads transformers' deprecated `is_gradient_checkpointing` (PEFT's code, not SegRet's: docs/peft.md).
pytestmark = pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")


def base_model() -> SegRetForSemanticSegmentation:
    torch.manual_seed(0)
    model = SegRetForSemanticSegmentation(small_config(drop_path_rate=0.1, decoder_dropout=0.1))
    with torch.no_grad():  # a trained-looking decoder: ZIR weights away from their zero start
        for residual in model.decode_head.zero_init_residuals:
            residual.weight.normal_(0, 0.1)
    return model


def lora_model(target_modules: str, modules_to_save: list[str] | None = None) -> nn.Module:
    config = LoraConfig(r=4, lora_alpha=8, target_modules=target_modules, modules_to_save=modules_to_save)
    return get_peft_model(base_model(), config)


def train(model: nn.Module, steps: int = 2, freeze_batch_norm: bool = False) -> None:
    """A few AdamW steps in train mode (dropout, drop path, batch statistics), as a fine-tuning run does."""
    model.train()
    if freeze_batch_norm:
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.eval()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    generator = torch.Generator().manual_seed(1)
    for _ in range(steps):
        pixel_values = torch.randn(2, 3, 32, 32, generator=generator)
        labels = torch.randint(0, 5, (2, 32, 32), generator=generator)
        loss = model(pixel_values=pixel_values, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()


def eval_logits(model: nn.Module) -> torch.Tensor:
    pixel_values = torch.randn(2, 3, 64, 96, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        return model.eval()(pixel_values=pixel_values).logits


def test_lora_on_the_decoder_projections_alone_trains():
    """The folded decoder would read the wrapped convolutions' base weights and bypass the adapters; with a LoRA
    layer in place it runs as written, so the adapters get gradients and change the logits."""
    model = lora_model(DECODER_PROJECTIONS)
    head = model.base_model.model.decode_head
    assert not head.can_fold()
    lora_parameters = {name: p for name, p in model.named_parameters() if p.requires_grad}
    assert lora_parameters and all("lora_" in name for name in lora_parameters)
    before = eval_logits(model)

    model.train()
    loss = model(pixel_values=torch.randn(2, 3, 64, 64), labels=torch.randint(0, 5, (2, 64, 64))).loss
    loss.backward()  # raised "element 0 of tensors does not require grad" while the fold bypassed the adapters
    assert all(p.grad is not None for p in lora_parameters.values())
    # B starts at zero (LoRA's default), so only B has a gradient at the first step.
    assert all(p.grad.abs().max() > 0 for name, p in lora_parameters.items() if "lora_B" in name)

    train(model)
    after = eval_logits(model)
    assert (after - before).abs().max() > 1e-3
    # What the adapters compute is the decoder as written, layer by layer, with the adapted layers.
    head.fold = False
    torch.testing.assert_close(eval_logits(model), after, rtol=0, atol=0)


def test_folding_skips_hooked_or_wrapped_layers_only():
    model = base_model().eval()
    head = model.decode_head
    assert head.can_fold()
    handle = head.fuse.register_forward_hook(lambda module, inputs, output: output * 2)
    assert not head.can_fold()
    hooked = eval_logits(model)
    handle.remove()
    assert head.can_fold()
    with torch.no_grad():
        head.fuse.weight.mul_(2)  # what the hook did, as a weight: the folded path must agree with the hook's output
    torch.testing.assert_close(eval_logits(model), hooked, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("recipe", ["batch_norm_saved", "batch_norm_frozen"])
def test_lora_everywhere_trains_saves_reloads_and_merges(recipe, tmp_path):
    """LoRA on every linear layer and 1×1 convolution, trained in train mode: the adapter saved and loaded onto a
    fresh copy of the base model gives the trained model's logits, and so does the merged model, which folds again.
    The BatchNorm statistics that training moves are either saved with the adapter (`modules_to_save`) or frozen
    (BatchNorm layers kept in eval mode): the two recipes of docs/peft.md."""
    base = base_model()
    base.save_pretrained(tmp_path / "base")
    saved = BATCH_NORMS if recipe == "batch_norm_saved" else None
    model = lora_model(EVERY_LINEAR_AND_POINTWISE, modules_to_save=saved)
    adapted = [name for name, module in model.named_modules() if hasattr(module, "lora_A")]
    assert any(".retention.q_proj" in name for name in adapted) and any(".ffn.fc2" in name for name in adapted)
    assert {f"decode_head.{layer}" for layer in ("fuse", "classifier")} <= {n.split("model.", 2)[-1] for n in adapted}
    running_mean = model.base_model.model.segret.encoder.embeddings.layers[0].normalization.running_mean.clone()
    before = eval_logits(model)

    train(model, freeze_batch_norm=recipe == "batch_norm_frozen")
    trained = eval_logits(model)
    assert (trained - before).abs().max() > 1e-2
    stem_norm = model.base_model.model.segret.encoder.embeddings.layers[0].normalization
    moved = not torch.equal(stem_norm.running_mean, running_mean)
    assert moved == (recipe == "batch_norm_saved")

    model.save_pretrained(tmp_path / "adapter")
    reloaded = PeftModel.from_pretrained(
        SegRetForSemanticSegmentation.from_pretrained(tmp_path / "base"), tmp_path / "adapter"
    )
    torch.testing.assert_close(eval_logits(reloaded), trained, rtol=0, atol=1e-6)

    merged = reloaded.merge_and_unload()
    assert type(merged) is SegRetForSemanticSegmentation and merged.decode_head.can_fold()
    torch.testing.assert_close(eval_logits(merged), trained, rtol=1e-4, atol=1e-4)


def test_adapter_alone_misses_the_batch_norm_statistics(tmp_path):
    """Why the recipe: trained in train mode without it, the backbone's BatchNorm statistics move but are not part of
    the adapter, so the reloaded adapter gives other logits."""
    base = base_model()
    base.save_pretrained(tmp_path / "base")
    model = lora_model(EVERY_LINEAR_AND_POINTWISE)
    train(model)
    trained = eval_logits(model)
    model.save_pretrained(tmp_path / "adapter")
    reloaded = PeftModel.from_pretrained(
        SegRetForSemanticSegmentation.from_pretrained(tmp_path / "base"), tmp_path / "adapter"
    )
    assert (eval_logits(reloaded) - trained).abs().max() > 1e-2
    # The same adapter on the trained statistics gives the trained logits: the statistics are all that is missing.
    statistics = {name: buffer for name, buffer in model.named_buffers() if "running_" in name}
    reloaded.load_state_dict({**reloaded.state_dict(), **copy.deepcopy(statistics)})
    torch.testing.assert_close(eval_logits(reloaded), trained, rtol=0, atol=1e-6)
