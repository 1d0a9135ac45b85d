"""Each private API behind ``mt.compat`` against the installed library: a library upgrade that changes
one fails here, by name, instead of somewhere inside a training run.

(``ctranslate2_convert`` is exercised by the CTranslate2 export tests, which need the package.)
"""

from __future__ import annotations

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers.logger import Logger
from torch.utils.data import DataLoader, TensorDataset

from mt import compat


def test_foreach_norm_and_mul_are_the_per_tensor_norms_and_an_in_place_scale():
    torch.manual_seed(0)
    tensors = [torch.randn(4, 3), torch.randn(7), torch.randn(2, 2, 2)]
    norms = compat.foreach_norm(tensors)
    torch.testing.assert_close(torch.stack(norms), torch.stack([t.norm() for t in tensors]))
    expected = [t * 0.5 for t in tensors]
    compat.foreach_mul_(tensors, torch.tensor(0.5))
    for got, want in zip(tensors, expected):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


def _adamw_after_steps(found_inf: list[float | None]) -> tuple[list[torch.Tensor], dict]:
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(5, 3)), torch.nn.Parameter(torch.randn(7))]
    optimizer = torch.optim.AdamW(params, lr=0.1, weight_decay=0.01, fused=True)
    for k, flag in enumerate(found_inf):
        for p in params:
            p.grad = torch.full_like(p, float("nan")) if flag else torch.randn_like(p) * (k + 1)
        if flag is not None:
            compat.skip_next_step(optimizer, torch.tensor(bool(flag)))
        optimizer.step()
    return [p.detach().clone() for p in params], optimizer.state_dict()


def test_skip_next_step_makes_a_fused_adamw_step_change_nothing_and_count_nothing():
    """A skipped step leaves weights, moments and step counts bit for bit as if it had not been taken (with NaN
    gradients, which an update would spread); an unskipped one equals a plain step."""
    assert compat.fused_step_skippable(torch.optim.AdamW([torch.nn.Parameter(torch.ones(1))], fused=True))
    assert not compat.fused_step_skippable(torch.optim.AdamW([torch.nn.Parameter(torch.ones(1))]))
    assert not compat.fused_step_skippable(torch.optim.SGD([torch.nn.Parameter(torch.ones(1))], lr=0.1))
    skipped, skipped_state = _adamw_after_steps([0.0, 1.0, 0.0])
    plain, plain_state = _adamw_after_steps([None, None])
    # the gradients of step k are randn * (k + 1) from one stream: replay the same draws without the skipped step
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(5, 3)), torch.nn.Parameter(torch.randn(7))]
    reference = torch.optim.AdamW(params, lr=0.1, weight_decay=0.01, fused=True)
    draws = []
    for k in range(3):
        draws.append([torch.randn_like(p) * (k + 1) if k != 1 else None for p in params])
    for grads in (draws[0], draws[2]):
        for p, g in zip(params, grads):
            p.grad = g
        reference.step()
    assert all(torch.equal(a, b.detach()) for a, b in zip(skipped, params))
    for index, state in skipped_state["state"].items():
        expected = reference.state_dict()["state"][index]
        assert int(state["step"]) == int(expected["step"]) == 2
        assert torch.equal(state["exp_avg"], expected["exp_avg"]) and torch.equal(
            state["exp_avg_sq"], expected["exp_avg_sq"]
        )
    assert all(int(state["step"]) == 2 for state in plain_state["state"].values())


def test_raise_recompile_limit_raises_and_never_lowers_it():
    config = torch._dynamo.config
    before = config.recompile_limit
    try:
        compat.raise_recompile_limit(before + 5)
        assert config.recompile_limit == before + 5
        compat.raise_recompile_limit(1)
        assert config.recompile_limit == before + 5
    finally:
        config.recompile_limit = before


def test_no_duck_sizing_turns_off_torchs_duck_shape_option():
    from torch.fx.experimental import _config

    before = _config.use_duck_shape  # a torch without the option fails here
    try:
        _config.use_duck_shape = True
        compat.no_duck_sizing()
        assert _config.use_duck_shape is False
    finally:
        _config.use_duck_shape = before


def test_onednn_packed_linear_equals_f_linear():
    if not torch.backends.mkldnn.is_available():
        pytest.skip("this torch build has no oneDNN")
    assert compat.onednn_linear_available()  # a torch with oneDNN that lost the op fails here, not silently
    torch.manual_seed(0)
    weight, bias, x = torch.randn(300, 32), torch.randn(300), torch.randn(64, 32)
    with torch.no_grad():
        packed = compat.onednn_pack_linear_weight(weight, 64)
        torch.testing.assert_close(compat.onednn_linear(x, packed, bias), F.linear(x, weight, bias))
        torch.testing.assert_close(compat.onednn_linear(x, packed, None), F.linear(x, weight))


class _Toy(L.LightningModule):
    def __init__(self, seen_steps: list[int] | None = None) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)
        self.seen_steps = seen_steps

    def training_step(self, batch, batch_idx):
        loss = self.layer(batch[0]).pow(2).mean()
        self.log("loss", loss)
        if self.seen_steps is not None:
            self.seen_steps.append(compat.logged_step(self.trainer))
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class _StepRecorder(Logger):
    """A logger that records the step each ``log_metrics`` call is made at."""

    def __init__(self) -> None:
        super().__init__()
        self.steps: list[int] = []

    name = "recorder"
    version = 0

    def log_metrics(self, metrics, step=None):
        if "loss" in metrics:
            self.steps.append(step)

    def log_hyperparams(self, params, *args, **kwargs):
        pass


def _trainer(**options) -> L.Trainer:
    defaults = dict(
        accelerator="cpu",
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
    )
    return L.Trainer(**{**defaults, **options})


def test_logged_step_is_the_step_lightning_writes_the_updates_logs_at():
    """With gradient accumulation, the step Lightning passes to the loggers for an update's values is
    what ``logged_step`` reads during that update."""
    seen: list[int] = []
    recorder = _StepRecorder()
    loader = DataLoader(TensorDataset(torch.randn(16, 2)), batch_size=2)  # 8 batches, 4 updates
    trainer = _trainer(max_epochs=1, logger=recorder, log_every_n_steps=1, accumulate_grad_batches=2)
    trainer.fit(_Toy(seen), loader)
    assert recorder.steps == [0, 1, 2, 3]
    assert seen[1::2] == recorder.steps  # the last micro-batch of each update


def test_logs_this_update_is_true_at_the_updates_lightning_writes_logs_for():
    """Read during each update, ``logs_this_update`` is true at exactly the steps the loggers receive."""
    recorder = _StepRecorder()
    told: list[tuple[int, bool]] = []

    class Asking(_Toy):
        def training_step(self, batch, batch_idx):
            told.append((compat.logged_step(self.trainer), compat.logs_this_update(self.trainer)))
            return super().training_step(batch, batch_idx)

    loader = DataLoader(TensorDataset(torch.randn(16, 2)), batch_size=2)  # 8 updates
    _trainer(max_epochs=1, logger=recorder, log_every_n_steps=3).fit(Asking(), loader)
    assert recorder.steps == [2, 5]
    assert [step for step, logs in told if logs] == recorder.steps


def test_is_last_batch_is_true_at_the_last_batch_of_each_epoch_only():
    told: list[bool] = []

    class Asking(L.Callback):
        def on_train_batch_end(self, trainer, *args):
            told.append(compat.is_last_batch(trainer))

    loader = DataLoader(TensorDataset(torch.randn(6, 2)), batch_size=2)  # 3 batches an epoch
    _trainer(max_epochs=2, callbacks=[Asking()]).fit(_Toy(), loader)
    assert told == [False, False, True, False, False, True]


def test_tensor_version_counts_in_place_changes_and_is_minus_one_for_an_inference_tensor():
    weight = torch.zeros(3)
    before = compat.tensor_version(weight)
    assert before >= 0
    weight.add_(1)
    assert compat.tensor_version(weight) > before
    with torch.inference_mode():
        frozen = torch.zeros(3)
    assert compat.tensor_version(frozen) == -1


def test_align_logged_step_sets_the_step_lightning_logs_the_update_at():
    """What ``align_logged_step`` writes at a batch start is the step the loggers receive for that update."""
    recorder = _StepRecorder()

    class Shifted(_Toy):
        def on_train_batch_start(self, batch, batch_idx):
            self.trainer.fit_loop.epoch_loop._batches_that_stepped = 100  # as a wrong restore would leave it
            compat.align_logged_step(self.trainer)

    loader = DataLoader(TensorDataset(torch.randn(6, 2)), batch_size=2)  # 3 updates
    _trainer(max_epochs=1, logger=recorder, log_every_n_steps=1).fit(Shifted([]), loader)
    assert recorder.steps == [0, 1, 2]


def test_save_last_checkpoint_writes_once_per_step_and_mark_saved_suppresses_it(tmp_path, monkeypatch):
    """``save_last_checkpoint`` makes a ``save_top_k=0`` writer save ``last.ckpt`` where Lightning's own
    hooks would not; it does not save a step twice, nor a step marked saved."""
    saves: list[int] = []
    save = L.Trainer.save_checkpoint
    monkeypatch.setattr(
        L.Trainer, "save_checkpoint", lambda self, *a, **k: saves.append(self.global_step) or save(self, *a, **k)
    )

    class Probe(L.Callback):
        def on_train_batch_end(self, trainer, module, *args):
            if trainer.global_step == 1:
                compat.mark_checkpoint_saved(writer, 1)
            compat.save_last_checkpoint(writer, trainer)
            compat.save_last_checkpoint(writer, trainer)  # again at the same step: nothing

    writer = ModelCheckpoint(dirpath=tmp_path, save_top_k=0, save_last=True)
    loader = DataLoader(TensorDataset(torch.randn(6, 2)), batch_size=2)  # 3 updates
    trainer = _trainer(max_epochs=1, callbacks=[writer, Probe()], enable_checkpointing=True)
    trainer.fit(_Toy(), loader)
    assert saves == [2, 3]
    assert torch.load(tmp_path / "last.ckpt", weights_only=True)["global_step"] == 3


def test_val_check_interval_overflow_reads_lightnings_refusal():
    loader = DataLoader(TensorDataset(torch.randn(6, 2)), batch_size=2)  # 3 batches an epoch

    class WithValidation(_Toy):
        def validation_step(self, batch, batch_idx):
            self.log("val", self.layer(batch[0]).mean())

    trainer = _trainer(max_epochs=1, val_check_interval=10)
    with pytest.raises(ValueError) as caught:
        trainer.fit(WithValidation(), loader, loader)
    assert compat.val_check_interval_overflow(caught.value) == 3
    assert compat.val_check_interval_overflow(ValueError("something else")) is None


def test_a_set_fingerprint_keys_the_cached_transforms_and_indices_mappings_are_seen():
    """Datasets given the same content fingerprint find the same cached transforms (their ``map`` results get
    the same fingerprint), and another fingerprint gives another."""
    import datasets

    def dataset(fingerprint: str):
        ds = datasets.Dataset.from_dict({"src": ["a", "b", "c"], "tgt": ["x", "y", "z"]})
        compat.set_dataset_fingerprint(ds, fingerprint)
        return ds

    def mapped(ds) -> str:
        return compat.dataset_fingerprint(ds.map(lambda row: {"n": len(row["src"])}))

    first, same, other = dataset("content-a"), dataset("content-a"), dataset("content-b")
    assert compat.dataset_fingerprint(first) == "content-a"
    assert mapped(first) == mapped(same) != mapped(other)
    assert not compat.has_indices_mapping(first)
    assert compat.has_indices_mapping(first.select([2, 0]))


def test_sacrebleu_tokenizer_for_is_the_tokenizer_sacrebleu_builds_for_a_target_language():
    from sacrebleu.metrics import BLEU

    for lang in ("zh", "de", None):
        metric = BLEU(trg_lang=lang or "")
        metric.corpus_score(["a"], [["a"]])
        assert f"|tok:{compat.sacrebleu_tokenizer_for(lang)}|" in str(metric.get_signature())
    assert (compat.sacrebleu_tokenizer_for("ja"), compat.sacrebleu_tokenizer_for("ko")) == ("ja-mecab", "ko-mecab")


def test_skip_sigterm_broadcast_removes_the_broadcast_lightning_makes_before_every_ddp_batch():
    import inspect

    from lightning.pytorch.loops.training_epoch_loop import _TrainingEpochLoop

    # What mt turns off: a method of the epoch loop, called before every batch of a run of several processes.
    assert "self._broadcast_sigterm_tensor()" in inspect.getsource(_TrainingEpochLoop.advance)
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False)
    other = L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False)
    compat.skip_sigterm_broadcast(trainer)
    called = []
    original = _TrainingEpochLoop._broadcast_sigterm_tensor
    try:
        _TrainingEpochLoop._broadcast_sigterm_tensor = lambda self: called.append(self)
        trainer.fit_loop.epoch_loop._broadcast_sigterm_tensor()
        other.fit_loop.epoch_loop._broadcast_sigterm_tensor()
    finally:
        _TrainingEpochLoop._broadcast_sigterm_tensor = original
    assert called == [other.fit_loop.epoch_loop]  # this trainer's loop no longer broadcasts; another's still does


@pytest.mark.parametrize("options", [{"val_check_interval": 2}, {"check_val_every_n_epoch": 2}])
def test_validates_after_this_batch_is_true_at_the_batches_lightning_validates_after(options):
    told: list[tuple[int, bool]] = []
    validated: list[int] = []

    class Asking(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            told.append((trainer.global_step, compat.validates_after_this_batch(trainer)))

        def on_validation_start(self, trainer, pl_module):
            validated.append(trainer.global_step)

    class Validated(_Toy):
        def validation_step(self, batch, batch_idx):
            return self.layer(batch[0]).sum()

    loader = DataLoader(TensorDataset(torch.randn(6, 2)), batch_size=2)  # 3 batches an epoch
    _trainer(max_epochs=4, callbacks=[Asking()], **options).fit(Validated(), loader, loader)
    assert validated and [step for step, yes in told if yes] == validated


def test_set_epoch_batches_done_makes_lightning_end_the_epoch_after_the_batches_left():
    """At the first batch of an epoch of 6, Lightning is told 3 are done: it trains 3, then ends the epoch (and
    says the last of them is the epoch's last); ``epoch_batches_done`` reads its count at each batch start."""
    seen: list[tuple[int, int, int]] = []

    class Telling(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if trainer.current_epoch == 0 and batch_idx == 0:
                compat.set_epoch_batches_done(trainer, 3)
            seen.append((trainer.current_epoch, compat.epoch_batches_done(trainer), batch_idx))

        def on_train_batch_end(self, trainer, *args):
            seen.append((trainer.current_epoch, -1, int(compat.is_last_batch(trainer))))

    loader = DataLoader(TensorDataset(torch.randn(12, 2)), batch_size=2)  # 6 batches an epoch
    _trainer(max_epochs=2, callbacks=[Telling()]).fit(_Toy(), loader)
    epoch0 = [entry for entry in seen if entry[0] == 0]
    assert [e[1] for e in epoch0 if e[1] >= 0] == [3, 4, 5]  # three batches trained in epoch 0
    assert [e[2] for e in epoch0 if e[1] < 0] == [0, 0, 1]  # the third is its last
    assert [e[1] for e in seen if e[0] == 1 and e[1] >= 0] == [0, 1, 2, 3, 4, 5]
