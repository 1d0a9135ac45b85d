"""The LightningModule: loss, optimizer and schedule, logging, validation decoding and BLEU.

The module builds its own network from plain config values saved as hyperparameters, and stores
the tokenizer's models in every checkpoint, so ``mt.model.checkpoint.load_checkpoint`` rebuilds a
working translator from the ``.ckpt`` file alone.
Each reliability guarantee lives in a component of its own: ``NonFiniteGuard`` (skipped non-finite
updates, clipping), ``StepLog`` (logs that reach as far as the checkpoints), ``Throughput``; the random
states and ``last.ckpt`` are callbacks (``mt.training.rng``, ``mt.training.checkpointing``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import Tensor

from mt import faults
from mt.compat import (
    align_logged_step,
    fused_step_skippable,
    logs_this_update,
    no_duck_sizing,
    raise_recompile_limit,
    skip_next_step,
)
from mt.config import MetricsConfig, ModelConfig, OptimConfig, SearchConfig, ValidationConfig, from_dict
from mt.data.batching import Batch
from mt.data.tokenizer import Tokenizer
from mt.decode.metrics import bleu, chrf
from mt.decode.translator import decode_ids
from mt.errors import RunError
from mt.model.checkpoint import read_checkpoint
from mt.model.transformer import Transformer
from mt.training.distributed import LaggedMax, agreed_max, gather_objects, gather_strided, world
from mt.training.guards import NonFiniteGuard
from mt.training.loss import projected_label_smoothed_nll
from mt.training.schedules import WarmupDecay
from mt.training.step_log import StepLog
from mt.training.throughput import Throughput


def adamw(model: torch.nn.Module, cfg: OptimConfig, *, fused: bool) -> torch.optim.AdamW:
    """AdamW over ``model``'s trainable parameters: ``optim.weight_decay`` on the matrices, none on biases and
    norms; ``fused``: one kernel for all of them (the benchmarks' peers get the same, ``scripts/bench_train.py``)."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (no_decay if param.ndim < 2 or "norm" in name else decay).append(param)
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr,
        betas=tuple(cfg.betas),
        eps=cfg.eps,
        fused=fused or None,
    )


class TranslationModule(L.LightningModule):
    """Trains and validates a ``Transformer``; hyperparameters are plain dicts of the typed configs.

    Args:
        model, optim, search, validation: ``dataclasses.asdict`` of the configs.
        src_vocab_size, tgt_vocab_size: from the tokenizer.
        data: the data config as a dict, so ``mt.evaluate`` finds the checkpoint's test split.
    """

    def __init__(
        self,
        model: dict,
        optim: dict,
        search: dict,
        validation: dict,
        *,
        src_vocab_size: int,
        tgt_vocab_size: int,
        data: dict | None = None,
        metrics: dict | None = None,
        budget_steps: int | None = None,
        budget_seconds: float | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.model_cfg = from_dict(ModelConfig, model)
        self.optim_cfg = from_dict(OptimConfig, optim)
        self.search_cfg = from_dict(SearchConfig, search)
        self.validation_cfg = from_dict(ValidationConfig, validation)
        self.metrics_cfg = from_dict(MetricsConfig, metrics or {})
        self.model = Transformer(self.model_cfg, src_vocab_size=src_vocab_size, tgt_vocab_size=tgt_vocab_size)
        self.tokenizer: Tokenizer | None = None  # set before training; restored from checkpoints
        self.throughput = Throughput()
        self.nonfinite = NonFiniteGuard(self.optim_cfg.max_consecutive_nonfinite, self.optim_cfg.clip_norm)
        self.step_log = StepLog()
        self._val_sums: list[Tensor] = []
        self._validated_at_step = -1
        self._clock: LaggedMax | None = None  # the ranks' agreement on the training clock (time budgets)
        self._clock_seconds: float | None = None  # the clock they last agreed on
        self._logging_update = False  # whether Lightning writes the logs of the update in progress
        self._updated_at_step = 0
        self._window_first_tokens: Tensor | None = None  # the global target tokens of its window's first batch
        self._window_stats: Tensor | None = None  # loss, NLL and token sums of the accumulation window so far
        self.progress_bar_values: dict[str, float] = {}  # read at the last logging step (StepProgressBar)

    def setup(self, stage: str) -> None:
        # Values logged under DDP are already reduced by hand (all-reduce of sums, gathered hypotheses).
        warnings.filterwarnings("ignore", message=r".*sync_dist=True.*")
        if self.trainer.world_size > 1:  # e.g. torchrun ranks that each made their own timestamped run dir
            run_dirs = gather_objects(str(Path(self.trainer.default_root_dir).resolve()))
            if len(set(run_dirs)) > 1:
                raise RunError(
                    f"the ranks disagree on the run directory ({', '.join(sorted(set(run_dirs)))}): "
                    f"pass the same hydra.run.dir=... to every process"
                )
            if self.tokenizer is not None:
                digests = gather_objects(
                    hashlib.sha256(self.tokenizer.src_model + self.tokenizer.tgt_model).hexdigest()
                )
                if len(set(digests)) > 1:
                    raise RunError(
                        "the ranks hold different tokenizers: train it once (one run directory on a shared disk)"
                    )

    # -- training ------------------------------------------------------------------------------

    def compile_layers(self, backend: str = "inductor") -> None:
        """Train through ``torch.compile`` of each encoder and decoder layer (regional compilation).

        Identical layers share one compiled graph, so compile time does not grow with depth (on CPU,
        3+3 layers: 79 s against 155 s for the whole forward). ``nn.Module.compile`` keeps parameter
        names and checkpoints; embeddings, output projection and loss stay eager. Decoding for
        validation BLEU runs the layers eagerly (its cached steps have other shapes)."""
        raise_recompile_limit(32)  # train and eval mode of each layer kind share one limit
        no_duck_sizing()  # no recompilation when a batch's source and target widths happen to be equal
        for layer in (*self.model.encoder_layers, *self.model.decoder_layers):
            layer.compile(backend=backend, dynamic=True)

    def _loss(self, batch: Batch) -> tuple[Tensor, Tensor, Tensor]:
        # The loss reads the decoder states and the output layer in chunks: no (tokens x vocabulary) tensors.
        hidden = self.model.decoder_states(batch.src_ids, batch.src_pad_mask, batch.tgt_in)
        output = self.model.output
        loss_sum, nll_sum = projected_label_smoothed_nll(
            hidden, output.weight, output.bias, batch.tgt_out, self.optim_cfg.label_smoothing
        )
        return loss_sum, nll_sum, batch.num_tgt_tokens

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        loss_sum, nll_sum, num_tokens = self._loss(batch)
        faults.point("training_step")
        # Sums over every rank's batch (one small all-reduce, no host sync): the loss is normalised by
        # the global token count, so W ranks x B equals one rank x W*B (DDP averages the gradients).
        stats = torch.stack([loss_sum.detach(), nll_sum.detach(), num_tokens.float(), (~loss_sum.isfinite()).float()])
        world_size = self.trainer.world_size
        if world_size > 1:
            torch.distributed.all_reduce(stats)
        _, _, total_tokens, nonfinite = stats.unbind()
        self.nonfinite.observe_loss(nonfinite)
        # An accumulation window of k batches is one batch of all their tokens: normalised here by the window's
        # first batch's token count (the others are not known yet), which on_before_optimizer_step turns into
        # the window's own, undoing Lightning's division of each batch's loss by k too.
        if self._window_stats is None:
            self._window_first_tokens = total_tokens
        loss = loss_sum * (world_size / self._window_first_tokens)
        # The update's values: over every batch of its accumulation window (and every rank), on the device.
        window = stats if self._window_stats is None else self._window_stats + stats
        self._window_stats = window
        window_loss, window_nll, window_tokens, _ = window.unbind()
        # The values stay on the device (StepLog); Lightning gets them at logging steps only (on_train_batch_end).
        self._logging_update = logs_this_update(self.trainer)
        self.step_log.start_update()
        self.step_log.record("train/loss", window_loss / window_tokens)
        self.step_log.record("train/ppl", torch.exp(window_nll / window_tokens))
        self.step_log.record("train/lr", self.optimizers().param_groups[0]["lr"])
        self.throughput.update(total_tokens)  # every rank's: the job's rate
        return loss

    def on_train_batch_end(self, *args: Any) -> None:
        # Runs after the callbacks' hooks (checkpoints) and before Lightning writes this step's logs: at a
        # logging step, or the last (a time limit stops the run in a callback's hook), the values go to
        # Lightning, read on the host once. Other steps never wait for the device.
        faults.point("after_step_saves")
        update_ended = self.trainer.global_step > self._updated_at_step  # not inside an accumulation window
        self._updated_at_step = self.trainer.global_step
        if update_ended:
            self._window_stats = None
            self._agree_on_the_clock(start=False)
        if update_ended and (self._logging_update or self.trainer.should_stop):
            if not self._logging_update:
                self._record_skipped()
            self._log_update()
        self.step_log.end_update()

    def _log_update(self) -> None:
        self.step_log.record("train/tgt_tokens_per_s", self.throughput.rate())  # since the last logging step
        pending = self.step_log.pending or {}
        names = [name for name, value in pending.items() if isinstance(value, Tensor)]
        read = torch.stack([pending[name].float().reshape(()) for name in names]).tolist() if names else []
        values = {**pending, **dict(zip(names, read))}
        for name, value in values.items():
            self.log(name, value)
        self.progress_bar_values = {
            name.removeprefix("train/"): values[name] for name in ("train/loss", "train/lr") if name in values
        }

    def _record_skipped(self) -> None:
        """Read the non-finite guard's counts (a host sync): warn about skipped updates, stop the run at the limit
        (``NonFiniteLossError``), and log the running count of skipped updates once there is one."""
        total = self.nonfinite.check(self._last_checkpoint)
        if total:
            self.step_log.record("train/nonfinite_steps", float(total))

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Skip the update when a loss in the accumulation window, or a gradient, was not finite (on any
        rank: the gradients are already all-reduced); else clip the gradients to ``optim.clip_norm``
        (``NonFiniteGuard``). With a fused AdamW the decision stays on the device (``skip_next_step``) and is
        read at logging steps and checkpoints; other optimizers zero the gradients of a skipped update, which
        reads it on the host. Under fp16 the grad scaler skips overflowing steps itself and Lightning clips
        after unscaling (``clips_itself``)."""
        grads = [p.grad for p in self.parameters() if p.grad is not None]
        clips_itself = self.clips_itself(str(self.trainer.precision))
        scale = None  # the gradients of a window of k batches: each token weighed alike (training_step)
        if self.trainer.accumulate_grad_batches > 1 and self._window_stats is not None:
            scale = self.trainer.accumulate_grad_batches * self._window_first_tokens / self._window_stats[2]
        skip, norm = self.nonfinite.before_step(
            grads, check_grads=clips_itself, step=self.trainer.global_step, scale=scale
        )
        if norm is not None:
            self.step_log.record("train/grad_norm", norm)
        if clips_itself and fused_step_skippable(optimizer):
            skip_next_step(optimizer, skip)
            if self._logging_update:
                self._record_skipped()
            return
        if clips_itself and bool(skip):
            optimizer.zero_grad(set_to_none=True)  # AdamW leaves parameters without gradients untouched
        self._record_skipped()

    def _last_checkpoint(self) -> str:
        for callback in self.trainer.checkpoint_callbacks:
            path = getattr(callback, "last_model_path", "")
            if path and Path(path).is_file():
                step = read_checkpoint(path).get("global_step")
                return f"{path} (step {step})"
        return "none (no checkpoint was saved yet)"

    def configure_optimizers(self) -> dict[str, Any]:
        cfg = self.optim_cfg
        optimizer = adamw(self.model, cfg, fused=self._use_fused_adamw())
        scheduler = WarmupDecay(
            optimizer,
            schedule=cfg.schedule,
            warmup_steps=cfg.warmup_steps,
            floor=cfg.lr_floor / cfg.lr,
            budget=cfg.decay_budget,
            total_steps=self.hparams.get("budget_steps"),
            total_seconds=self.hparams.get("budget_seconds"),
            clock=self.shared_training_seconds,
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def _attached_trainer(self) -> L.Trainer | None:
        try:
            return self.trainer
        except RuntimeError:  # no trainer attached (e.g. the optimizers built outside fit)
            return None

    def shared_training_seconds(self) -> float:
        """Training seconds so far (earlier runs of a resumed one included), the same on every rank, so that every
        rank derives the same learning rate from it. Under DDP: the ranks' latest clock, agreed at the first reading
        and at the start of training (a host sync each), then at every update's end, one update late, without
        making the host wait for the device (``_agree_on_the_clock``)."""
        if world()[1] == 1:
            return self.throughput.elapsed_seconds()
        if self._clock_seconds is None:
            self._clock_seconds = agreed_max(self.throughput.elapsed_seconds(), self.device)
        return self._clock_seconds

    def _agree_on_the_clock(self, *, start: bool) -> None:
        """Under DDP with a time budget: the clock the ranks agree on (``shared_training_seconds``), at the start of
        training (at once) and at each update's end (that of the previous update's end, by ``LaggedMax``)."""
        if self.optim_cfg.decay_budget != "time" or world()[1] == 1:
            return
        seconds = self.throughput.elapsed_seconds()
        if start:
            self._clock_seconds = agreed_max(seconds, self.device)
            self._clock = LaggedMax(first=self._clock_seconds)
        elif self._clock is not None:
            self._clock_seconds = self._clock.exchange(seconds, self.device)

    @staticmethod
    def clips_itself(precision: str) -> bool:
        """Whether the module checks and clips the gradients (``on_before_optimizer_step``); not under
        fp16, whose scaled gradients Lightning's mixed precision unscales and clips."""
        return precision != "16-mixed"

    def _use_fused_adamw(self) -> bool:
        """Fused AdamW (one kernel over all parameters, which skips a non-finite update on the device: see
        ``on_before_optimizer_step``) on CPUs and GPUs, except where Lightning's fp16 mixed precision must clip
        its gradients (the fused kernel unscales them itself)."""
        trainer = self._attached_trainer()
        if self.device.type not in ("cpu", "cuda"):
            return False
        precision = str(trainer.precision) if trainer is not None else ""
        return self.clips_itself(precision) or self.optim_cfg.clip_norm <= 0

    def on_train_start(self) -> None:
        self.throughput.reset()
        self.step_log.replay(self.trainer)
        self._updated_at_step = self.trainer.global_step
        self._agree_on_the_clock(start=True)

    def on_train_batch_start(self, batch: Batch, batch_idx: int) -> None:
        align_logged_step(self.trainer)  # after a resume, Lightning's count can be one short
        # Training again: the time since validation started (the saves after it, in on_validation_end or at the
        # epoch's end) is left out of the rate.
        self.throughput.resume()

    # -- validation ----------------------------------------------------------------------------

    def on_validation_start(self) -> None:
        # A limit of skipped updates reached since the last logging step stops the run before it validates.
        self.nonfinite.check(self._last_checkpoint)
        self.throughput.pause()  # the training rate leaves validation and its saves out (until the next batch)

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        loss_sum, nll_sum, num_tokens = self._loss(batch)
        faults.point("validation_step")
        if batch_idx < self._num_real_val_batches():  # under DDP the last few may repeat others' batches
            self._val_sums.append(torch.stack([loss_sum, nll_sum, num_tokens.float()]))

    def _num_real_val_batches(self) -> int:
        loaders = self.trainer.val_dataloaders
        sampler = getattr(loaders, "batch_sampler", None)
        return getattr(sampler, "num_real_batches", 1 << 62)

    def on_validation_epoch_end(self) -> None:
        sums = torch.stack(self._val_sums).sum(0) if self._val_sums else torch.zeros(3, device=self.device)
        self._val_sums.clear()
        sums = self.all_gather(sums).reshape(-1, 3).sum(0) if self.trainer.world_size > 1 else sums
        num_tokens = sums[2].clamp(min=1)
        self.log("val/loss", sums[0] / num_tokens, prog_bar=True, sync_dist=False)
        self.log("val/ppl", torch.exp(sums[1] / num_tokens), sync_dist=False)
        self.log("time/train_hours", self.throughput.elapsed_hours())
        if self.validation_cfg.decode != "none" and not self.trainer.sanity_checking:
            self._log_validation_scores()
        if not self.trainer.sanity_checking:
            self._validated_at_step = self.trainer.global_step

    def _log_validation_scores(self) -> None:
        """BLEU and chrF of each validation set (a direction); with several, each is logged as ``val/bleu/DIR``
        and ``val/bleu`` is their mean: the value that selects best.ckpt and stops early."""
        valid_sets = self.trainer.datamodule.valid_sets
        bleu_scores, chrf_scores = [], []
        for valid_set in valid_sets:
            hypotheses, references = self.validation_translations(valid_set)
            tokenize = self.metrics_cfg.bleu_tokenize
            bleu_scores.append(bleu(hypotheses, [references], tgt_lang=valid_set.tgt_lang, tokenize=tokenize).score)
            chrf_scores.append(chrf(hypotheses, [references]).score)
            if len(valid_sets) > 1:
                self.log(f"val/bleu/{valid_set.name}", bleu_scores[-1])
                self.log(f"val/chrf/{valid_set.name}", chrf_scores[-1])
        self.log("val/bleu", sum(bleu_scores) / len(bleu_scores), prog_bar=True)
        self.log("val/chrf", sum(chrf_scores) / len(chrf_scores))

    def validation_translations(self, valid_set) -> tuple[list[str], list[str]]:
        """The sources of ``valid_set`` decoded (greedy or beam, per ``validation``), and their references.

        Under DDP each rank decodes every W-th sentence and the hypotheses are gathered back in
        order, so the scores equal a single process's on the same weights.
        """
        corpus, references = valid_set.corpus, valid_set.references
        count = (
            len(corpus)
            if self.validation_cfg.max_sentences is None
            else min(len(corpus), self.validation_cfg.max_sentences)
        )
        beam = 1 if self.validation_cfg.decode == "greedy" else self.validation_cfg.beam
        search = dataclasses.replace(
            self.search_cfg, beam=beam, nbest=1, sampling=False
        )  # a search, also if search=sample
        rank, world_size = self.trainer.global_rank, self.trainer.world_size
        with torch.compiler.set_stance("force_eager"):  # compiled layers (compile_layers) run eagerly here
            hyps = decode_ids(
                self.model,
                [corpus.src(i) for i in range(rank, count, world_size)],
                search,
                device=self.device,
                progress=False,
                desc="validate",
                return_scores=False,
            )
        tokens = gather_strided([nbest[0].tokens for nbest in hyps], count)
        texts = self.tokenizer.decode_tgt(tokens)
        return texts, [references[int(corpus.index[i])] for i in range(count)]

    # -- checkpoints ---------------------------------------------------------------------------

    def on_train_end(self) -> None:
        self.nonfinite.check(self._last_checkpoint)  # a limit reached since the last logging step stops it here

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Nothing is saved past the limit of skipped updates: the run stops here, naming the last good checkpoint.
        self.nonfinite.check(self._last_checkpoint)
        checkpoint["nonfinite"] = self.nonfinite.state_dict()
        if self.tokenizer is not None:
            checkpoint["tokenizer"] = self.tokenizer.to_state()
        checkpoint["train_seconds"] = self.throughput.elapsed_seconds()
        if self._validated_at_step == self.trainer.global_step:  # these weights were just validated
            checkpoint["val_metrics"] = {
                name: float(value) for name, value in self.trainer.callback_metrics.items() if name.startswith("val/")
            }
        self.step_log.save(self.trainer, checkpoint)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if "tokenizer" in checkpoint:
            self.tokenizer = Tokenizer.from_state(checkpoint["tokenizer"])
        self.throughput.previous_seconds = float(checkpoint.get("train_seconds", 0.0))
        if "nonfinite" in checkpoint:  # (checkpoints before it start from no skipped update)
            self.nonfinite.load_state_dict(checkpoint["nonfinite"])
        self.step_log.load(checkpoint)
