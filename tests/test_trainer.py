"""transformers' `Trainer` with gradient accumulation logs the same loss and gradient norm as the larger batch."""

import pytest
import torch
from conftest import small_config
from torch.utils.data import SequentialSampler
from transformers import Trainer, TrainingArguments

from modeling_segret import SegRetForSemanticSegmentation
from modeling_segret.modeling_segret import SegRetPreTrainedModel

IMAGE_SIZE = 64
NUM_STEPS = 2


class SequentialTrainer(Trainer):
    """The samples in dataset order, so that both runs see the same batches (`train_sampling_strategy` is 5.x only)."""

    def _get_train_sampler(self, *args, **kwargs):
        return SequentialSampler(self.train_dataset)


def synthetic_dataset(num_samples: int) -> list[dict]:
    """Two images alternating, each sample with its own labels: every micro-batch of 2 and batch of 4 then holds the
    same images, so the training-mode BatchNorm statistics agree, while the per-sample losses all differ. Every pixel
    is labelled, so each micro-batch's mean is over as many pixels as the other's."""
    generator = torch.Generator().manual_seed(1)
    images = torch.randn(2, 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator)
    labels = torch.randint(0, 5, (num_samples, IMAGE_SIZE, IMAGE_SIZE), generator=generator)
    return [{"pixel_values": images[index % 2], "labels": labels[index]} for index in range(num_samples)]


def train_and_log(output_dir, batch_size: int, accumulation_steps: int) -> list[dict]:
    torch.manual_seed(0)
    model = SegRetForSemanticSegmentation(small_config(drop_path_rate=0.0))
    args = TrainingArguments(
        output_dir=str(output_dir),
        per_device_train_batch_size=batch_size,
        gradient_accumulation_steps=accumulation_steps,
        max_steps=NUM_STEPS,
        learning_rate=0.5,
        optim="sgd",
        lr_scheduler_type="constant",
        max_grad_norm=1e6,  # logged, never clipped
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        seed=0,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    trainer = SequentialTrainer(model=model, args=args, train_dataset=synthetic_dataset(4 * NUM_STEPS))
    trainer.train()
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(logs) == NUM_STEPS, trainer.state.log_history
    return logs


def test_accumulated_batches_log_the_larger_batch_loss_and_grad_norm(tmp_path):
    """Batch 4 × accumulation 1 and batch 2 × accumulation 2: the same loss and gradient norm at both steps (the
    second step also checks the update). `accepts_loss_kwargs = False` tells `Trainer` that the loss is a per-batch
    mean, so it divides by the accumulation steps itself."""
    large_batch = train_and_log(tmp_path / "large", batch_size=4, accumulation_steps=1)
    accumulated = train_and_log(tmp_path / "accumulated", batch_size=2, accumulation_steps=2)
    for large, small in zip(large_batch, accumulated):
        assert small["loss"] == pytest.approx(large["loss"], rel=1e-5)
        assert small["grad_norm"] == pytest.approx(large["grad_norm"], rel=1e-5)


def test_without_the_declaration_trainer_fails_loudly_instead_of_doubling_the_loss(tmp_path, monkeypatch):
    """Without the class attribute, `Trainer` infers from `forward(**kwargs)` that the model takes
    `num_items_in_batch` and skips its division by the accumulation steps (loss and gradient would come out
    doubled). The forward refuses the unknown argument by name, so the mistake cannot pass silently."""
    monkeypatch.delattr(SegRetPreTrainedModel, "accepts_loss_kwargs")
    with pytest.raises(TypeError, match="num_items_in_batch"):
        train_and_log(tmp_path / "accumulated", batch_size=2, accumulation_steps=2)
