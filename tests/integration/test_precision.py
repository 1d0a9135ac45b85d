"""Mixed precision on CPU: bf16 autocast trains, the loss falls without NaN, padding stays finite."""

from __future__ import annotations

import csv

import pytest
import torch

from mt.data.tokenizer import BOS_ID, EOS_ID, PAD_ID
from mt.training.loss import label_smoothed_nll
from mt.training.run import train
from tests.conftest import random_batch, random_model, tiny_train_config


def test_bf16_mixed_training_on_cpu_lowers_the_loss(toy_corpus_dir, tmp_path):
    config = tiny_train_config(
        toy_corpus_dir,
        **{
            "trainer.precision": "bf16-mixed",
            "trainer.max_steps": 60,
            "trainer.log_every_n_steps": 1,
            "validation.decode": "greedy",
            "test_after_training": False,
        },
    )
    train(config, tmp_path)
    with open(tmp_path / "csv/metrics.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    losses = [float(r["train/loss"]) for r in rows if r.get("train/loss")]
    assert len(losses) == 60 and all(loss == loss and loss < float("inf") for loss in losses)
    assert sum(losses[-10:]) / 10 < 0.7 * sum(losses[:10]) / 10
    val_bleu = [float(r["val/bleu"]) for r in rows if r.get("val/bleu")]
    assert len(val_bleu) >= 1  # validation decoded under bf16 and logged its BLEU


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_fully_padded_rows_stay_finite_in_half_precision(dtype):
    """A row of nothing but padding (source and target) gives finite outputs and gradients."""
    model = random_model(0).train()
    src_ids, src_pad_mask = random_batch(1, [6, 3])
    src_ids[1] = PAD_ID  # row 1: all padding
    src_pad_mask = src_ids == PAD_ID
    tgt_in = torch.tensor([[BOS_ID, 5, 6, 7], [PAD_ID] * 4])
    tgt_out = torch.tensor([[5, 6, 7, EOS_ID], [PAD_ID] * 4])
    with torch.autocast("cpu", dtype=dtype):
        logits = model(src_ids, src_pad_mask, tgt_in)
        loss_sum, _ = label_smoothed_nll(logits, tgt_out, 0.1)
    assert torch.isfinite(logits).all() and torch.isfinite(loss_sum)
    loss_sum.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    # The real row is unaffected by the padded one.
    with torch.autocast("cpu", dtype=dtype):
        alone = model.eval()(src_ids[:1], src_pad_mask[:1], tgt_in[:1])
        together = model(src_ids, src_pad_mask, tgt_in)[:1]
    torch.testing.assert_close(together.float(), alone.float(), rtol=0.05, atol=0.05)


def test_compiled_training_has_the_eager_losses_and_the_same_checkpoint_names(toy_corpus_dir, tmp_path):
    """trainer.compile goes through torch.compile (AOTAutograd here: inductor would need minutes of C++
    compilation on CPU); the losses equal eager training's and the checkpoint's parameter names do not change."""
    from tests.helpers import losses

    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    runs = {}
    compiled = {"trainer.compile": True, "trainer.compile_backend": "aot_eager"}
    for name, overrides in [("eager", {}), ("compiled", compiled)]:
        config = tiny_train_config(
            toy_corpus_dir,
            **{"trainer.max_steps": 6, "trainer.log_every_n_steps": 1, "validation.decode": "none"},
            **{"test_after_training": False},
            **overrides,
        )
        train(config, tmp_path / name)
        runs[name] = losses(tmp_path / name / "csv/metrics.csv")
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > 0  # the compiled run went through dynamo
    assert sorted(runs["compiled"]) == sorted(runs["eager"]) == list(range(6))
    for step, loss in runs["eager"].items():
        assert runs["compiled"][step] == pytest.approx(loss, abs=1e-4), step
    names = [set(torch.load(tmp_path / n / "checkpoints/last.ckpt", weights_only=False)["state_dict"]) for n in runs]
    assert names[0] == names[1]


@pytest.mark.slow
def test_compiled_layers_share_one_graph_per_kind_at_any_depth_and_validation_decodes_eagerly(toy_corpus_dir, tmp_path):
    """trainer.compile compiles each layer (regional compilation): the dynamo graphs (train and eval
    mode of one encoder and one decoder layer) do not grow with depth, and validation BLEU's cached
    decoding, whose steps have other shapes, adds none."""
    graphs = {}
    for layers, decode in [(1, "none"), (3, "greedy")]:
        torch._dynamo.reset()
        torch._dynamo.utils.counters.clear()
        config = tiny_train_config(
            toy_corpus_dir,
            **{"trainer.max_steps": 4, "trainer.val_check_interval": 2, "trainer.check_val_every_n_epoch": None},
            **{"model.encoder_layers": layers, "model.decoder_layers": layers, "validation.decode": decode},
            **{"trainer.compile": True, "trainer.compile_backend": "aot_eager", "test_after_training": False},
        )
        train(config, tmp_path / f"{layers}-{decode}")
        graphs[layers, decode] = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    assert graphs[1, "none"] == graphs[3, "greedy"] > 0, graphs


def test_an_unknown_compile_backend_is_refused_by_name(toy_corpus_dir, tmp_path):
    from mt.errors import RunError

    config = tiny_train_config(toy_corpus_dir, **{"trainer.compile": True, "trainer.compile_backend": "nonsense"})
    with pytest.raises(RunError, match="trainer.compile_backend='nonsense'"):
        train(config, tmp_path)
    assert not (tmp_path / "tokenizer").exists()  # refused before SentencePiece trains (minutes on a real corpus)


def test_cuda_setup_uses_the_tf32_api_lightning_reads_and_turns_cudnn_attention_off(monkeypatch):
    """Lightning calls torch.get_float32_matmul_precision() when it sets up a CUDA device; torch >= 2.9
    raises there if TF32 was enabled through the newer per-backend API (seen on an H200: every GPU run
    failed at start). cuDNN attention, which re-plans for every new shape, is off. The flags need no GPU."""
    from mt.device import prepare_cuda

    precision, cudnn_sdp = torch.get_float32_matmul_precision(), torch.backends.cuda.cudnn_sdp_enabled()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    try:
        prepare_cuda(tf32=True)
        assert torch.get_float32_matmul_precision() == "high"
        assert not torch.backends.cuda.cudnn_sdp_enabled()
    finally:
        torch.set_float32_matmul_precision(precision)
        torch.backends.cuda.enable_cudnn_sdp(cudnn_sdp)


@pytest.mark.parametrize("max_norm", [0.05, 1e6])
def test_clipping_by_the_checked_norm_equals_clip_grad_norm(max_norm):
    """The guard's one pass (the finiteness check's norm, then the clipping) against torch's clip_grad_norm_."""
    from mt.training.guards import NonFiniteGuard

    torch.manual_seed(0)
    grads = [torch.randn(5, 7), torch.randn(3), torch.randn(2, 2, 2)]
    expected = [g.clone() for g in grads]
    params = [torch.nn.Parameter(torch.zeros_like(g)) for g in expected]
    for param, grad in zip(params, expected):
        param.grad = grad
    reference_norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
    skip, norm = NonFiniteGuard(max_consecutive=3, clip_norm=max_norm).before_step(grads, check_grads=True)
    assert not skip
    torch.testing.assert_close(norm, reference_norm)
    for grad, param in zip(grads, params):
        torch.testing.assert_close(grad, param.grad, rtol=0, atol=0)


@pytest.mark.parametrize("clip_norm", [0.0, 0.05])
def test_the_optimizer_steps_on_gradients_clipped_to_clip_norm(toy_corpus_dir, tmp_path, monkeypatch, clip_norm):
    """The module clips (one pass over the gradients, shared with the finiteness check; Lightning's
    clipping is off): at AdamW's step the gradients' norm is min(clip_norm, the logged train/grad_norm)."""
    from mt.training.guards import total_norm

    seen = []
    step = torch.optim.AdamW.step

    def recording_step(self, closure=None):
        loss = closure() if closure is not None else None  # Lightning's closure runs backward and the hooks
        seen.append(float(total_norm([p.grad for g in self.param_groups for p in g["params"] if p.grad is not None])))
        step(self)
        return loss

    monkeypatch.setattr(torch.optim.AdamW, "step", recording_step)
    config = tiny_train_config(
        toy_corpus_dir,
        **{"trainer.max_steps": 4, "trainer.log_every_n_steps": 1, "optim.clip_norm": clip_norm},
        **{"validation.decode": "none", "test_after_training": False},
    )
    train(config, tmp_path)
    with open(tmp_path / "csv/metrics.csv") as handle:
        logged = [float(r["train/grad_norm"]) for r in csv.DictReader(handle) if r.get("train/grad_norm")]
    assert len(seen) == len(logged) == 4
    expected = [min(norm, clip_norm) if clip_norm else norm for norm in logged]
    assert min(logged) > 0.05 and seen == pytest.approx(expected, rel=1e-4)


@pytest.mark.parametrize("multiple", [8, pytest.param(1, marks=pytest.mark.slow)])
def test_compiled_training_compiles_once_however_the_batch_shapes_change(
    toy_corpus_dir, tmp_path, monkeypatch, multiple
):
    """With trainer.compile (dynamic shapes), padded to multiples of 8 or not, the graphs compiled in the first step
    serve every later batch: a run over many (sentences, source width, target width) shapes recompiles nothing."""
    import lightning as L

    from tests.helpers import with_callback

    shapes, graphs = [], []

    class Shapes(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            shapes.append((len(batch), batch.src_ids.size(1), batch.tgt_in.size(1)))
            graphs.append(torch._dynamo.utils.counters["stats"]["unique_graphs"])

    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    with_callback(monkeypatch, Shapes())
    config = tiny_train_config(
        toy_corpus_dir,
        **{"data.pad_to_multiple": multiple, "data.max_tokens": 128, "trainer.max_steps": 24},
        **{"trainer.compile": True, "trainer.compile_backend": "aot_eager", "test_after_training": False},
        **{"trainer.limit_val_batches": 0, "validation.decode": "none"},
    )
    train(config, tmp_path)
    assert all(s % multiple == 0 and t % multiple == 0 for _, s, t in shapes), shapes
    assert len(set(shapes)) >= 4, shapes  # the run did change shapes
    assert graphs[0] > 0 and graphs[-1] == graphs[0], (graphs, shapes)
