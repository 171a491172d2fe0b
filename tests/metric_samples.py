"""Deterministic prediction/label pairs of varying sizes, shared by test_metrics.py and its torchrun helper."""

import torch


def make_samples(num_samples: int, num_labels: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Sample i: a (pred, target) pair of size (17 + 5i, 23 + 3i), ~10% ignore pixels, from seed i."""
    samples = []
    for i in range(num_samples):
        g = torch.Generator().manual_seed(i)
        shape = (17 + 5 * i, 23 + 3 * i)
        target = torch.randint(0, num_labels, shape, generator=g)
        target[torch.rand(shape, generator=g) < 0.1] = 255
        # Predictions agree with the target half of the time, so IoUs are far from 0 and differ per class.
        pred = torch.where(
            torch.rand(shape, generator=g) < 0.5, target, torch.randint(0, num_labels, shape, generator=g)
        )
        pred[pred == 255] = 0
        samples.append((pred, target))
    return samples
