"""The chunked loss at the vocabulary against the textbook one and torch's own cross-entropy: the same loss,
NLL and gradients, over several chunks, with padding, with and without a bias and label smoothing."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mt.data.tokenizer import PAD_ID
from mt.training.loss import label_smoothed_nll, projected_label_smoothed_nll


def test_label_smoothing_zero_equals_cross_entropy():
    torch.manual_seed(0)
    logits = torch.randn(3, 5, 11)
    target = torch.randint(1, 11, (3, 5))
    target[0, 3:] = PAD_ID
    loss, nll = label_smoothed_nll(logits, target, 0.0)
    expected = F.cross_entropy(logits.view(-1, 11), target.view(-1), ignore_index=PAD_ID, reduction="sum")
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(nll, expected)


def test_label_smoothing_equals_torch_label_smoothing():
    torch.manual_seed(1)
    logits = torch.randn(2, 4, 9)
    target = torch.randint(1, 9, (2, 4))
    target[1, 2:] = PAD_ID
    loss, _ = label_smoothed_nll(logits, target, 0.1)
    expected = F.cross_entropy(
        logits.view(-1, 9), target.view(-1), ignore_index=PAD_ID, label_smoothing=0.1, reduction="sum"
    )
    torch.testing.assert_close(loss, expected)


def _inputs(seed: int, bias: bool):
    generator = torch.Generator().manual_seed(seed)
    hidden = torch.randn(3, 11, 16, generator=generator, requires_grad=True)
    weight = (0.5 * torch.randn(50, 16, generator=generator)).requires_grad_()
    b = (0.5 * torch.randn(50, generator=generator)).requires_grad_() if bias else None
    target = torch.randint(4, 50, (3, 11), generator=generator)
    target[0, 7:] = PAD_ID
    target[2, 3:] = PAD_ID
    return hidden, weight, b, target


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("epsilon", [0.0, 0.1])
@pytest.mark.parametrize("chunk", [5, 1000])  # several chunks, the last one short; all rows at once
def test_chunked_loss_and_gradients_equal_the_textbook_loss(bias: bool, epsilon: float, chunk: int) -> None:
    hidden, weight, b, target = _inputs(0, bias)
    loss, nll = projected_label_smoothed_nll(hidden, weight, b, target, epsilon, chunk=chunk)
    grads = torch.autograd.grad(loss, [t for t in (hidden, weight, b) if t is not None])

    logits = F.linear(hidden, weight, b)
    expected, expected_nll = label_smoothed_nll(logits, target, epsilon)
    # torch's own label-smoothed cross-entropy, an independent reference for the textbook form.
    torch_loss = F.cross_entropy(
        logits.reshape(-1, 50), target.reshape(-1), ignore_index=PAD_ID, label_smoothing=epsilon, reduction="sum"
    )
    torch.testing.assert_close(expected, torch_loss)
    expected_grads = torch.autograd.grad(expected, [t for t in (hidden, weight, b) if t is not None])
    torch.testing.assert_close(loss, expected, rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(nll, expected_nll, rtol=1e-6, atol=1e-5)
    for got, want in zip(grads, expected_grads):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert grads[0][0, 7:].abs().max() == 0  # padding: no gradient


def test_without_gradients_it_only_scores() -> None:
    hidden, weight, b, target = _inputs(1, True)
    with torch.no_grad():
        loss, nll = projected_label_smoothed_nll(hidden, weight, b, target, 0.1, chunk=4)
        expected, expected_nll = label_smoothed_nll(F.linear(hidden, weight, b), target, 0.1)
    assert not loss.requires_grad
    torch.testing.assert_close((loss, nll), (expected, expected_nll), rtol=1e-6, atol=1e-5)


def test_a_scaled_loss_scales_its_gradients() -> None:
    """The backward pass multiplies the saved gradients by the incoming one (training divides by tokens)."""
    hidden, weight, b, target = _inputs(2, True)
    loss, _ = projected_label_smoothed_nll(hidden, weight, b, target, 0.1, chunk=7)
    (grad,) = torch.autograd.grad(loss * 0.25, [weight])
    expected, _ = label_smoothed_nll(F.linear(hidden, weight, b), target, 0.1)
    (want,) = torch.autograd.grad(expected * 0.25, [weight])
    torch.testing.assert_close(grad, want, rtol=1e-5, atol=1e-6)
