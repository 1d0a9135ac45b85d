"""The CUDA path against the CPU reference: SDPA kernels, cached decoding, search, bf16 training, fused
AdamW and torch.compile (inductor). Skipped without a GPU; scripts/gpu_check.sh runs them on one."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from mt.data.tokenizer import BOS_ID
from mt.decode.search import beam_search, greedy_search
from mt.model.layers import attend, attention_mask
from mt.training.run import train
from tests.conftest import random_attention_inputs, random_batch, random_model, tiny_train_config
from tests.helpers import losses

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
CUDA = torch.device("cuda")


@pytest.fixture(autouse=True)
def exact_matmuls():
    """Full fp32 matmuls (no TF32), so the GPU is compared with the CPU at fp32 tolerances."""
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    yield
    torch.set_float32_matmul_precision(before)


@pytest.mark.parametrize("query_len,key_len,causal", [(5, 5, True), (1, 7, True), (3, 7, True), (4, 6, False)])
def test_cuda_sdpa_attention_equals_the_cpu_path_in_outputs_and_gradients(query_len, key_len, causal):
    q, k, v, key_pad_mask = random_attention_inputs(query_len, key_len, padded_row=False)
    mask = attention_mask(key_pad_mask)
    on_cpu = attend(q, k, v, mask, causal=causal)
    gpu_inputs = [t.detach().to(CUDA).requires_grad_() for t in (q, k, v)]
    on_gpu = attend(*gpu_inputs, mask.to(CUDA), causal=causal)
    assert_close(on_gpu.cpu(), on_cpu, rtol=1e-4, atol=1e-5)
    grad = torch.randn_like(on_cpu)
    cpu_grads = torch.autograd.grad(on_cpu, (q, k, v), grad)
    gpu_grads = torch.autograd.grad(on_gpu, gpu_inputs, grad.to(CUDA))
    for theirs, mine in zip(cpu_grads, gpu_grads):
        assert_close(mine.cpu(), theirs, rtol=1e-4, atol=1e-5)


def test_model_on_cuda_equals_cpu_and_cached_decoding_equals_full():
    model = random_model(1, layers=3)
    src_ids, src_pad_mask = random_batch(2, [3, 7, 1])
    torch.manual_seed(3)
    tgt_in = torch.cat([torch.full((3, 1), BOS_ID), torch.randint(4, 40, (3, 8))], dim=1)
    on_cpu = torch.log_softmax(model(src_ids, src_pad_mask, tgt_in), -1)
    model = model.to(CUDA)
    src_ids, src_pad_mask, tgt_in = src_ids.to(CUDA), src_pad_mask.to(CUDA), tgt_in.to(CUDA)
    full = torch.log_softmax(model(src_ids, src_pad_mask, tgt_in), -1)
    assert_close(full.cpu(), on_cpu, rtol=1e-4, atol=1e-4)
    memory, cache = model.encode(src_ids, src_pad_mask), None
    for t in range(1, tgt_in.size(1) + 1):
        step_log_probs, cache = model.decode_step(tgt_in[:, :t], memory, src_pad_mask, cache)
        assert_close(step_log_probs, full[:, t - 1], rtol=1e-4, atol=1e-4)


def test_search_on_cuda_finds_the_cpu_hypotheses_and_beam_one_is_greedy():
    model = random_model(21, vocab=30)
    src_ids, src_pad_mask = random_batch(22, [3, 8, 5, 1], vocab=30)
    options = dict(max_len_a=1.5, max_len_b=4, length_penalty_alpha=1.0, length_penalty_type="gnmt")
    cpu_beam = beam_search(model, src_ids, src_pad_mask, beam=4, nbest=4, **options)
    model, src_ids, src_pad_mask = model.to(CUDA), src_ids.to(CUDA), src_pad_mask.to(CUDA)
    gpu_beam = beam_search(model, src_ids, src_pad_mask, beam=4, nbest=4, **options)
    assert [[h.tokens for h in n] for n in gpu_beam] == [[h.tokens for h in n] for n in cpu_beam]
    for gpu, cpu in zip(gpu_beam, cpu_beam):
        assert [h.score for h in gpu] == pytest.approx([h.score for h in cpu], abs=1e-4)
    greedy = greedy_search(model, src_ids, src_pad_mask, **options)
    beam_one = beam_search(model, src_ids, src_pad_mask, beam=1, **options)
    assert [h.tokens for h in greedy] == [b[0].tokens for b in beam_one]


@pytest.mark.parametrize(
    "precision,clip_norm,fused",
    [("bf16-mixed", 0.0, True), ("bf16-mixed", 1.0, True), ("16-mixed", 0.0, True), ("16-mixed", 1.0, False)],
)
def test_mixed_precision_training_on_cuda_lowers_the_loss_with_fused_adamw_unless_fp16_clips(
    toy_corpus_dir, tmp_path, precision, clip_norm, fused, monkeypatch
):
    """mt clips (and fuses AdamW) itself, except under fp16, where Lightning unscales and clips and the
    fused kernel, which unscales itself, cannot be used with clipping."""
    from mt.training.module import TranslationModule

    seen = {}
    original = TranslationModule.configure_optimizers

    def spy(self):
        result = original(self)
        seen["fused"] = bool(result["optimizer"].defaults.get("fused"))
        return result

    monkeypatch.setattr(TranslationModule, "configure_optimizers", spy)
    config = tiny_train_config(
        toy_corpus_dir,
        **{"trainer.accelerator": "gpu", "trainer.precision": precision, "trainer.max_steps": 60},
        **{"trainer.log_every_n_steps": 1, "optim.clip_norm": clip_norm, "test_after_training": False},
    )
    train(config, tmp_path)
    step_losses = list(losses(tmp_path / "csv/metrics.csv").values())
    assert len(step_losses) == 60 and all(torch.isfinite(torch.tensor(step_losses)))
    assert sum(step_losses[-10:]) < 0.7 * sum(step_losses[:10])
    assert seen["fused"] is fused


def test_inductor_compiled_training_on_cuda_has_the_eager_losses(toy_corpus_dir, tmp_path):
    torch._dynamo.reset()
    runs = {}
    for name, overrides in [("eager", {}), ("compiled", {"trainer.compile": True})]:
        config = tiny_train_config(
            toy_corpus_dir,
            **{"trainer.accelerator": "gpu", "trainer.max_steps": 6, "trainer.log_every_n_steps": 1},
            **{"trainer.tf32": False, "validation.decode": "none", "test_after_training": False},
            **overrides,
        )
        train(config, tmp_path / name)
        runs[name] = list(losses(tmp_path / name / "csv/metrics.csv").values())
    assert len(runs["eager"]) == len(runs["compiled"]) == 6
    assert runs["compiled"] == pytest.approx(runs["eager"], abs=2e-3)


def test_flash_or_efficient_sdpa_runs_in_bf16_on_cuda():
    """The training shapes (causal self-attention, padded cross-attention) run under bf16 autocast
    without falling back to the math kernel where a fused one applies."""
    q, k, v = (torch.randn(4, 8, 32, 64, device=CUDA, dtype=torch.bfloat16) for _ in range(3))
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION]):
        causal = attend(q, k, v, None, causal=True)
        key_pad_mask = torch.zeros(4, 32, dtype=torch.bool, device=CUDA)
        key_pad_mask[1, -5:] = True
        padded = attend(q, k, v, attention_mask(key_pad_mask))
    reference = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), is_causal=True)
    assert_close(causal.float(), reference, rtol=2e-2, atol=2e-2)
    assert torch.isfinite(padded).all()


def test_after_cuda_setup_bf16_attention_runs_no_cudnn_kernel():
    """cuDNN's SDPA re-plans for every new shape (hundreds of ms); prepare_cuda turns it off, so bf16
    attention of changing lengths runs the flash / memory-efficient kernels."""
    from mt.device import prepare_cuda

    prepare_cuda(tf32=False)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as profile:
        for length in (17, 23, 31):
            q, k, v = (torch.randn(4, 8, length, 64, device=CUDA, dtype=torch.bfloat16) for _ in range(3))
            attend(q, k, v, None, causal=True)
        torch.cuda.synchronize()
    kernels = [event.name for event in profile.events() if event.device_type == torch.autograd.DeviceType.CUDA]
    assert kernels and not any("cudnn" in name.lower() for name in kernels), kernels


def test_fused_adamw_on_cuda_skips_a_step_on_the_device_bit_for_bit():
    from mt import compat

    param = torch.nn.Parameter(torch.randn(64, device=CUDA))
    optimizer = torch.optim.AdamW([param], lr=0.1, fused=True)
    param.grad = torch.randn_like(param)
    optimizer.step()
    before = param.detach().clone(), optimizer.state[param]["exp_avg"].clone(), int(optimizer.state[param]["step"])
    param.grad = torch.full_like(param, float("nan"))
    compat.skip_next_step(optimizer, torch.tensor(True, device=CUDA))
    optimizer.step()
    assert torch.equal(param.detach(), before[0]) and torch.equal(optimizer.state[param]["exp_avg"], before[1])
    assert int(optimizer.state[param]["step"]) == before[2]


def test_a_moving_average_of_the_weights_trains_and_resumes_on_cuda(toy_corpus_dir, tmp_path):
    """``optim.ema_decay``: the average lives where the weights do (it stayed on the CPU, and the second update
    mixed devices), also once a resume has loaded it."""
    options = {"trainer.accelerator": "gpu", "optim.ema_decay": 0.9, "trainer.log_every_n_steps": 1}
    options["test_after_training"] = False
    train(tiny_train_config(toy_corpus_dir, **options, **{"trainer.max_steps": 10}), tmp_path)
    train(tiny_train_config(toy_corpus_dir, **options, **{"trainer.max_steps": 20, "resume": "auto"}), tmp_path)
    saved = torch.load(tmp_path / "checkpoints/last.ckpt", map_location="cpu", weights_only=False)
    assert saved["global_step"] == 20 and int(saved["averaging_state"]["n_averaged"]) == 20


@pytest.mark.parametrize("precision", ["bf16-mixed", "32-true"])
def test_ordinary_training_steps_on_cuda_make_no_host_sync(toy_corpus_dir, tmp_path, monkeypatch, precision):
    from tests.integration.test_host_syncs import counted_run

    counts, special = counted_run(
        toy_corpus_dir, tmp_path, monkeypatch, **{"trainer.accelerator": "gpu", "trainer.precision": precision}
    )
    ordinary = [step for step in range(60) if not special[step]]
    assert len(ordinary) >= 40
    syncing = {step: dict(counts[step]) for step in ordinary if counts[step]}
    assert syncing == {}, f"host syncs in ordinary steps: {syncing}"


def test_training_batches_reach_cuda_from_pinned_memory(toy_corpus_dir, tmp_path, monkeypatch):
    import lightning as L

    from tests.helpers import with_callback

    seen = []

    class PinProbe(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            loader = trainer.train_dataloader
            seen.append((loader.pin_memory, batch.src_ids.device.type))

    with_callback(monkeypatch, PinProbe())
    config = tiny_train_config(
        toy_corpus_dir, **{"trainer.accelerator": "gpu", "trainer.max_steps": 3, "validation.decode": "none"}
    )
    train(config, tmp_path)
    assert seen == [(True, "cuda")] * 3


def test_profile_on_cuda_reports_device_busy_share_and_kernels(toy_corpus_dir, tmp_path):
    config = tiny_train_config(
        toy_corpus_dir,
        **{"trainer.accelerator": "gpu", "trainer.max_steps": 12, "trainer.log_every_n_steps": 50},
        **{"trainer.profile_after": 4, "trainer.profile_steps": 5, "validation.decode": "none"},
    )
    train(config, tmp_path)
    summary = (tmp_path / "profile/summary.txt").read_text()
    assert "profile: 5 training steps" in summary and "device busy" in summary
    assert "aten::_local_scalar_dense 0," in summary and "top kernels (device time)" in summary


def test_lagged_agreement_on_cuda_answers_a_step_late_without_waiting_for_queued_work(tmp_path):
    """``LaggedMax`` on one NCCL rank: each exchange answers the previous one's value, and returns while the GPU
    is still busy with work queued before it (a host sync would have waited for that work)."""
    import torch.distributed as dist

    from mt.training.distributed import LaggedMax

    dist.init_process_group("nccl", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        lagged = LaggedMax()
        assert lagged.exchange(3, CUDA) == 0.0
        torch.cuda.synchronize()
        big = torch.randn(8192, 8192, device=CUDA)
        for _ in range(40):  # about a second of fp32 products, queued
            big = (big @ big).clamp_(-1, 1)
        assert lagged.exchange(5, CUDA) == 3.0
        busy = not torch.cuda.current_stream().query()
        torch.cuda.synchronize()
        assert lagged.exchange(0, CUDA) == 5.0
        assert busy, "the exchange waited for the work queued before it"
    finally:
        dist.destroy_process_group()
