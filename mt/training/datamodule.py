"""LightningDataModule: tokenizer on first use, encoded splits of one corpus or several, token-bucket
dataloaders, and one validation set per direction."""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader

from mt.config import DataConfig, TokenizerConfig
from mt.data.batching import Batch, MixtureBatchSampler, PairDataset, ResumableLoader, TokenBatchSampler, round_up
from mt.data.corpus import EncodedCorpus
from mt.data.mixture import Corpus, corpora, draw_counts, source_prefix
from mt.data.preprocess import describe_source, prepare_split_arrow, raw_dataset
from mt.data.provenance import train_files
from mt.data.run_tokenizer import run_tokenizer
from mt.data.tokenizer import Tokenizer
from mt.errors import DataError
from mt.training.distributed import is_global_zero_from_env

log = logging.getLogger(__name__)


@dataclass
class ValidSet:
    """The validation split of one direction: its encoded sources (with their prefix) and raw references."""

    name: str  # the direction, e.g. de-en
    tgt_lang: str
    corpus: EncodedCorpus
    references: list[str]


class TranslationDataModule(L.LightningDataModule):
    """Training and validation data of one corpus or of several (``data.corpora``).

    Args:
        data: where the corpus is and how it is batched.
        tokenizer: how to train SentencePiece when ``run_dir/tokenizer`` holds no model yet.
        run_dir: the run directory; the tokenizer and the encoded-data cache live under it.
        seed: seeds the batch shuffling (with the epoch).
    """

    def __init__(
        self,
        data: DataConfig,
        tokenizer: TokenizerConfig,
        *,
        run_dir: str | Path,
        seed: int,
    ) -> None:
        super().__init__()
        self.data_cfg = data
        self.tokenizer_cfg = tokenizer
        self.run_dir = Path(run_dir)
        self.seed = seed
        self.corpora: list[Corpus] = corpora(data)
        self.tokenizer: Tokenizer | None = None
        self.train_corpora: list[EncodedCorpus] = []
        self.valid_sets: list[ValidSet] = []
        self._files: list | None = None

    @property
    def files(self) -> list:
        """The training files as the run started with them (``train_files``), read once (the digests of files
        unchanged since an earlier start are memoised in ``cache_dir``)."""
        if self._files is None:
            self._files = train_files(self.data_cfg, memo=self.cache_dir)
        return self._files

    def state_dict(self) -> dict:
        """What a checkpoint records of the data beside the model's ``data`` hyperparameters: the seed that orders
        the batches, and the training files (``train_files``, as the run started with them, not as they may have
        been changed since) that ``mt.training.resume.check_same_data`` compares before a resumed run starts."""
        try:
            files = self.files
        except (DataError, OSError):  # the files gone: the checkpoint is saved all the same
            files = None
        return {"seed": self.seed, "train_files": files}

    def load_state_dict(self, state_dict: dict) -> None:
        """Nothing to restore: the position in the data is the batch sampler's own state."""

    @property
    def train_corpus(self) -> EncodedCorpus | None:
        """The training split of a one-corpus run."""
        return self.train_corpora[0] if len(self.train_corpora) == 1 else None

    @property
    def mixture(self) -> bool:
        return len(self.corpora) > 1

    @property
    def cache_dir(self) -> Path:
        return Path(self.data_cfg.cache_dir) if self.data_cfg.cache_dir else self.run_dir / "data"

    def prepare_tokenizer(self, from_checkpoint: bool = False) -> Tokenizer:
        """The run's tokenizer (``mt.data.run_tokenizer.run_tokenizer``): the run directory's, a run's with the
        same data and settings from ``data.cache_dir``, or one trained now. ``from_checkpoint``: the launch keeps a
        checkpoint's tokenizer (``init_from=``, or a resume)."""
        self.tokenizer = run_tokenizer(
            self.data_cfg,
            self.tokenizer_cfg,
            directory=self.run_dir / "tokenizer",
            cache_dir=self.cache_dir,
            shared=bool(self.data_cfg.cache_dir),
            seed=self.seed,
            files=self.files,
            from_checkpoint=from_checkpoint,
        )
        return self.tokenizer

    def setup(self, stage: str | None = None) -> None:
        """Encoded splits, memory-mapped from the cache; ranks that start together build each once."""
        if self.tokenizer is None:
            self.prepare_tokenizer()
        if not self.train_corpora and stage in (None, "fit"):
            self.train_corpora = [self._encoded(corpus, "train") for corpus in self.corpora]
        if not self.valid_sets and stage in (None, "fit", "validate"):
            self.valid_sets = [
                ValidSet(
                    corpus.direction if self.mixture else corpus.data.name,
                    corpus.data.tgt_lang,
                    self._encoded(corpus, "valid"),
                    raw_dataset(corpus.data, "valid", cache_dir=self.cache_dir)["tgt"],
                )
                for corpus in self.corpora
                if corpus.valid
            ]
            for corpus, valid in zip([c for c in self.corpora if c.valid], self.valid_sets):
                self._note_oversize(corpus, valid.corpus)

    def _note_oversize(self, corpus: Corpus, encoded: EncodedCorpus) -> None:
        """Warn about validation pairs longer than ``data.max_tokens``, naming their lines: each is validated in a
        batch of its own (the training split is cleaned to ``data.max_len`` instead)."""
        cost = round_up(np.maximum(encoded.src_lengths, encoded.tgt_lengths) + 1, self.data_cfg.pad_to_multiple)
        long = np.flatnonzero(cost > self.data_cfg.max_tokens)
        if long.size and is_global_zero_from_env():  # said once, not by every rank
            lines = ", ".join(f"{int(encoded.index[i]) + 1} ({int(cost[i])} tokens)" for i in long[:5])
            log.warning(
                "%s: %d pair%s longer than data.max_tokens=%d, each validated in a batch of its own: line %s%s",
                describe_source(corpus.data, "valid"),
                long.size,
                "s" if long.size > 1 else "",
                self.data_cfg.max_tokens,
                lines,
                ", ..." if long.size > 5 else "",
            )

    def _encoded(self, corpus: Corpus, split: str) -> EncodedCorpus:
        prefix = [self.tokenizer.symbol_id(symbol) for symbol in source_prefix(self.data_cfg, corpus, split)]
        return prepare_split_arrow(
            corpus.data,
            split,
            self.tokenizer,
            cache_dir=self.cache_dir,
            num_proc=self.data_cfg.preprocess_workers,
            src_prefix=prefix,
        )

    def draws(self) -> list[int]:
        """Pairs each epoch draws from each training corpus (``mt.data.mixture.draw_counts``)."""
        weights = [c.weight for c in self.corpora]
        return draw_counts(
            [len(c) for c in self.train_corpora],
            weights=None if weights[0] is None else weights,
            temperature=self.data_cfg.temperature,
        )

    def _sampler(self, corpora: list[EncodedCorpus], split: str, *, shuffle: bool) -> TokenBatchSampler:
        trainer = self.trainer
        src_lengths = np.concatenate([c.src_lengths for c in corpora])
        tgt_lengths = np.concatenate([c.tgt_lengths for c in corpora])
        common = dict(
            num_replicas=trainer.world_size if trainer else 1,
            rank=trainer.global_rank if trainer else 0,
            pad_to_multiple=self.data_cfg.pad_to_multiple,
        )
        # Validation counted in batches across epochs (check_val_every_n_epoch null) falls at window ends only if
        # every epoch ends with a whole accumulation window (TokenBatchSampler's batch_multiple).
        across_epochs = trainer is not None and split == "train" and trainer.check_val_every_n_epoch is None
        if across_epochs and trainer.accumulate_grad_batches > 1:
            common["batch_multiple"] = trainer.accumulate_grad_batches
        try:
            if split == "train" and self.mixture:
                return MixtureBatchSampler(
                    src_lengths,
                    tgt_lengths,
                    self.data_cfg.max_tokens,
                    corpus_sizes=[len(c) for c in corpora],
                    draws=self.draws(),
                    seed=self.seed,
                    epoch=trainer.current_epoch if trainer else 0,  # the loader is rebuilt every epoch
                    **common,
                )
            return TokenBatchSampler(
                src_lengths,
                tgt_lengths,
                self.data_cfg.max_tokens,
                shuffle=shuffle,
                seed=self.seed,
                oversize_alone=split != "train",  # validation scores every pair; training data is cleaned to fit
                **common,
            )
        except ValueError as error:
            raise DataError(f"data {self.data_cfg.name!r} {split} split: {error}; raise data.max_tokens") from None

    def _loader(self, corpora: list[EncodedCorpus], split: str, *, shuffle: bool) -> DataLoader:
        sampler = self._sampler(corpora, split, shuffle=shuffle)
        # The training loader checkpoints its position; its own generator keeps the creation of an
        # iterator from drawing on the global RNG (which dropout uses), so resumed runs stay exact.
        loader_class = ResumableLoader if split == "train" else DataLoader
        return loader_class(
            PairDataset(corpora),
            batch_sampler=sampler,
            collate_fn=functools.partial(PairDataset.collate, pad_to_multiple=self.data_cfg.pad_to_multiple),
            num_workers=self.data_cfg.num_workers,
            persistent_workers=self.data_cfg.num_workers > 0,
            # Page-locked batches for CUDA, so Batch.to's non-blocking copy does not block the host.
            pin_memory=self.pins_memory,
            generator=torch.Generator().manual_seed(self.seed),
        )

    @property
    def pins_memory(self) -> bool:
        """Whether batches go to a CUDA device (then the loader pins them)."""
        return self.trainer is not None and self.trainer.strategy.root_device.type == "cuda"

    def train_dataloader(self) -> DataLoader:
        loader = self._loader(self.train_corpora, "train", shuffle=True)
        sampler = loader.batch_sampler
        log.info(
            "train: %d pairs, %d batches per epoch per rank, padding %.1f%% of positions",
            len(loader.dataset),
            len(sampler),
            100 * sampler.padding_share(),
        )
        if isinstance(sampler, MixtureBatchSampler):
            self._log_draws(sampler)
        return loader

    def _log_draws(self, sampler: MixtureBatchSampler) -> None:
        """How many pairs of each corpus this epoch drew: in the log, and in TensorBoard (``data/drawn/NAME``)."""
        counts = sampler.drawn_counts()
        log.info(
            "epoch %d draws %s",
            sampler.epoch,
            ", ".join(
                f"{c.name} {m:,} of {len(corpus):,} ({m / len(corpus):.2f}x)"
                for c, corpus, m in zip(self.corpora, self.train_corpora, counts)
            ),
        )
        trainer = self.trainer
        if trainer is None or trainer.global_rank != 0:
            return
        from lightning.pytorch.loggers import TensorBoardLogger

        metrics = {f"data/drawn/{c.name}": float(m) for c, m in zip(self.corpora, counts)}
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.log_metrics({**metrics, "epoch": float(sampler.epoch)}, step=trainer.global_step)

    def val_dataloader(self) -> DataLoader:
        return self._loader([s.corpus for s in self.valid_sets], "valid", shuffle=False)

    def transfer_batch_to_device(self, batch: Batch, device: torch.device, dataloader_idx: int) -> Batch:
        return batch.to(device)
