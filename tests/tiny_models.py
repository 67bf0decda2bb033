"""Helpers shared by the tests that build tiny random-init multi-exit models."""

from __future__ import annotations

import torch


def sharpen(model: torch.nn.Module, scale: float = 8.0) -> None:
    """Random-init logits are near-uniform; scale the linear classifiers so that entropies spread
    over the whole range and exit decisions differ between samples, layers and knob values."""
    with torch.no_grad():
        for name, mod in model.heads.named_modules():
            if isinstance(mod, torch.nn.Linear) and "classifier" in name:
                mod.weight.mul_(scale)
