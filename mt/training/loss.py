"""The label-smoothed loss at the vocabulary, computed in chunks of target positions.

``label_smoothed_nll`` is the textbook form over materialised logits: (tokens x vocabulary) float32 tensors
for the logits, their log-softmax, and in the backward pass the gradients of both, at 32k tokens x 32k pieces
4 GiB each. ``projected_label_smoothed_nll`` takes the decoder states and the output layer instead and never holds
more than ``chunk`` rows of logits: each chunk's logits, loss and gradients (with respect to the states, the
weight and the bias) are computed together in the forward pass, and the backward pass only scales them by the
incoming gradient (the loss is a scalar), as fused linear cross-entropy kernels do. The two agree in loss and
gradients to float32 rounding (``tests/unit/training/test_loss.py``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from mt.data.tokenizer import PAD_ID

CHUNK_ELEMENTS = 1 << 22  # logits per chunk (16 MiB in float32): rows = CHUNK_ELEMENTS // vocabulary


def label_smoothed_nll(
    logits: Tensor, target: Tensor, epsilon: float, *, pad_id: int = PAD_ID
) -> tuple[Tensor, Tensor]:
    """Summed label-smoothed loss and summed NLL over non-pad target tokens.

    The smoothed target puts ``1 - epsilon`` on the reference token and spreads ``epsilon``
    uniformly over the vocabulary (as ``F.cross_entropy(label_smoothing=epsilon)`` does).

    Args:
        logits: (B, T, V). target: (B, T) with ``pad_id`` at padding.
    """
    log_probs = F.log_softmax(logits.float(), dim=-1)
    not_pad = target != pad_id
    nll = -log_probs.gather(-1, target.unsqueeze(-1)).squeeze(-1)
    nll_sum = nll.masked_fill(~not_pad, 0.0).sum()
    if epsilon == 0.0:
        return nll_sum, nll_sum
    uniform = -log_probs.mean(dim=-1)  # expected NLL under a uniform target
    smooth_sum = uniform.masked_fill(~not_pad, 0.0).sum()
    return (1.0 - epsilon) * nll_sum + epsilon * smooth_sum, nll_sum


def projected_label_smoothed_nll(
    hidden: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    target: Tensor,
    epsilon: float,
    *,
    pad_id: int = PAD_ID,
    chunk: int | None = None,
) -> tuple[Tensor, Tensor]:
    """``label_smoothed_nll(hidden @ weight.T + bias, target, epsilon)`` without the (tokens x V) tensors.

    Args:
        hidden: (B, T, D) decoder states. weight: (V, D), bias: (V,) or None: the output layer.
        target: (B, T) with ``pad_id`` at padding (those positions are left out before any product).
        chunk: rows of logits at a time (default: ``CHUNK_ELEMENTS // V``).
    """
    # Padding is weighted out rather than indexed out: a boolean index would wait for the device (a host sync).
    states, labels = hidden.reshape(-1, hidden.size(-1)), target.reshape(-1)
    rows = chunk or max(1, CHUNK_ELEMENTS // weight.size(0))
    if torch.is_grad_enabled() and (states.requires_grad or weight.requires_grad):
        loss, nll = _ProjectedLoss.apply(states, weight, bias, labels, epsilon, rows, pad_id)
        return loss, nll
    with torch.no_grad():
        loss, nll, _ = _chunks(states, weight, bias, labels, epsilon, rows, pad_id, gradients=False)
    return loss, nll


def _compute_dtype(tensor: Tensor) -> torch.dtype:
    """The dtype autocast would multiply in (bf16/fp16 under mixed precision), else the states' own."""
    device = tensor.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else tensor.dtype


def _chunks(
    states: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    labels: Tensor,
    epsilon: float,
    rows: int,
    pad_id: int,
    *,
    gradients: bool,
) -> tuple[Tensor, Tensor, tuple[Tensor, Tensor, Tensor | None] | None]:
    """Loss and NLL sums (float32) and, with ``gradients``, d(loss)/d(states, weight, bias)."""
    dtype = _compute_dtype(states)
    w = weight.to(dtype)
    vocab = weight.size(0)
    loss = states.new_zeros((), dtype=torch.float32)
    nll_sum = states.new_zeros((), dtype=torch.float32)
    grads = None
    if gradients:
        grad_states = torch.empty_like(states)
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
        grad_bias = None if bias is None else torch.zeros(vocab, dtype=torch.float32, device=weight.device)
    with torch.autocast(states.device.type, enabled=False):
        for start in range(0, states.size(0), rows):
            x = states[start : start + rows].to(dtype)
            y = labels[start : start + rows]
            real = (y != pad_id).float()
            logits = (x @ w.T).float()
            if bias is not None:
                logits += bias.float()
            log_z = torch.logsumexp(logits, dim=-1)
            target_logit = logits.gather(1, y[:, None]).squeeze(1)
            nll = (log_z - target_logit) * real
            nll_sum += nll.sum()
            # Expected NLL under a uniform target: log Z - mean(logits).
            loss += (1.0 - epsilon) * nll.sum() + epsilon * ((log_z - logits.mean(dim=-1)) * real).sum()
            if gradients:
                # d loss / d logits = softmax - ((1 - eps) one_hot + eps / V), in place over the logits; 0 at pads.
                grad = logits.sub_(log_z[:, None]).exp_()
                grad -= epsilon / vocab
                grad.scatter_add_(1, y[:, None], torch.full_like(real[:, None], epsilon - 1.0))
                grad *= real[:, None]
                grad_states[start : start + rows] = (grad.to(dtype) @ w).to(states.dtype)
                grad_weight += (grad.to(dtype).T @ x).float()
                if grad_bias is not None:
                    grad_bias += grad.sum(dim=0)
    if gradients:
        grads = (grad_states, grad_weight.to(weight.dtype), None if grad_bias is None else grad_bias.to(bias.dtype))
    return loss, nll_sum, grads


class _ProjectedLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, states, weight, bias, labels, epsilon, rows, pad_id):
        loss, nll, grads = _chunks(states, weight, bias, labels, epsilon, rows, pad_id, gradients=True)
        ctx.save_for_backward(*(g for g in grads if g is not None))
        ctx.has_bias = bias is not None
        ctx.mark_non_differentiable(nll)
        return loss, nll

    @staticmethod
    def backward(ctx, grad_loss, _grad_nll):
        saved = ctx.saved_tensors
        grad_states, grad_weight = saved[0] * grad_loss.to(saved[0].dtype), saved[1] * grad_loss.to(saved[1].dtype)
        grad_bias = saved[2] * grad_loss.to(saved[2].dtype) if ctx.has_bias else None
        return grad_states, grad_weight, grad_bias, None, None, None, None
