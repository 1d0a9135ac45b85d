"""The FLOPs a target token costs, against the model's own weight matrices."""

from __future__ import annotations

from dataclasses import asdict

from mt.training.throughput import flops_per_target_token
from tests.conftest import random_model


def test_flops_per_target_token_are_six_per_weight_a_token_meets():
    """Brute force: every 2-D weight of the encoder and decoder layers and the output projection is met once per
    token (with the source as long as the target), at 2 FLOPs forward and 4 backward per weight."""
    model = random_model(layers=3, vocab=100)
    weights = sum(
        p.numel()
        for layers in (model.encoder_layers, model.decoder_layers)
        for p in layers.parameters()
        if p.dim() == 2
    )
    weights += model.output.weight.numel()
    assert flops_per_target_token(asdict(model.cfg), 100) == 6 * weights
