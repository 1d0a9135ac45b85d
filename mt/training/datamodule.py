"""LightningDataModule: tokenizer on first use, encoded splits, token-bucket dataloaders."""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader

from mt.atomic import atomic_write
from mt.config import DataConfig, TokenizerConfig
from mt.data.batching import Batch, PairDataset, ResumableLoader, TokenBatchSampler
from mt.data.corpus import EncodedCorpus, data_identity
from mt.data.preprocess import describe_source, prepare_split_arrow, raw_dataset, sample_sentences
from mt.data.tokenizer import Tokenizer, train_tokenizer
from mt.errors import DataError, TokenizerError

log = logging.getLogger(__name__)


class TranslationDataModule(L.LightningDataModule):
    """Training and validation data of one corpus direction.

    Args:
        data: where the corpus is and how it is batched.
        tokenizer: how to train SentencePiece when ``run_dir/tokenizer`` holds no model yet.
        run_dir: the run directory; the tokenizer and the encoded-data cache live under it.
        seed: seeds the batch shuffling (with the epoch).
    """

    def __init__(self, data: DataConfig, tokenizer: TokenizerConfig, *, run_dir: str | Path, seed: int) -> None:
        super().__init__()
        self.data_cfg = data
        self.tokenizer_cfg = tokenizer
        self.run_dir = Path(run_dir)
        self.seed = seed
        self.tokenizer: Tokenizer | None = None
        self.train_corpus: EncodedCorpus | None = None
        self.valid_corpus: EncodedCorpus | None = None
        self.valid_references: list[str] = []

    @property
    def cache_dir(self) -> Path:
        return Path(self.data_cfg.cache_dir) if self.data_cfg.cache_dir else self.run_dir / "data"

    def prepare_tokenizer(self) -> Tokenizer:
        """The run's tokenizer: loaded from ``run_dir/tokenizer``; else from the shared cache (a run
        with the same data, tokenizer settings and seed trained it); else trained on a sample of the
        training split (``tokenizer.input_sentence_size`` pairs). Saved in the run (and the cache)."""
        directory = self.run_dir / "tokenizer"
        tokenizer = Tokenizer.load(directory)
        settings = asdict(self.tokenizer_cfg)
        saved_settings = directory / "settings.json"  # runs before it was written have none: trusted
        if tokenizer is not None and saved_settings.is_file():
            saved = json.loads(saved_settings.read_text())
            changed = [
                f"tokenizer.{k}={settings[k]} (it has {saved.get(k)})" for k in settings if saved.get(k) != settings[k]
            ]
            if changed:
                raise TokenizerError(
                    f"{directory} was trained with other settings: this run asks for {', '.join(changed)}; "
                    f"keep them, or train in another hydra.run.dir"
                )
        shared = self._shared_tokenizer_dir()
        if tokenizer is None and shared is not None and (tokenizer := Tokenizer.load(shared)) is not None:
            log.info("tokenizer from the cache: %s", shared)
            tokenizer.save(directory)
        if tokenizer is None:
            cfg = self.tokenizer_cfg
            src, tgt = sample_sentences(
                self.data_cfg, "train", cfg.input_sentence_size, self.seed, cache_dir=self.cache_dir
            )
            if not src:
                raise DataError(f"{describe_source(self.data_cfg, 'train')}: the train split is empty")
            for lang, side in ((self.data_cfg.src_lang, src), (self.data_cfg.tgt_lang, tgt)):
                if not any(line.strip() for line in side):
                    raise DataError(
                        f"{describe_source(self.data_cfg, 'train')}: every {lang} line of the train split (of "
                        f"{len(side)} sampled) is blank: expected one sentence a line"
                    )
            log.info(
                "training SentencePiece (%s, %d, %s) on %d pairs of %s train",
                cfg.model_type,
                cfg.vocab_size,
                "joint" if cfg.joint else "separate",
                len(src),
                self.data_cfg.name,
            )
            tokenizer = train_tokenizer(
                src,
                tgt,
                vocab_size=cfg.vocab_size,
                joint=cfg.joint,
                model_type=cfg.model_type,
                character_coverage=cfg.character_coverage,
                input_sentence_size=cfg.input_sentence_size,
                seed=self.seed,
            )
            tokenizer.save(directory)
            if shared is not None:
                tokenizer.save(shared)
        if not saved_settings.is_file():
            with atomic_write(saved_settings) as handle:
                handle.write(json.dumps(settings, sort_keys=True).encode())
        self.tokenizer = tokenizer
        return tokenizer

    def _shared_tokenizer_dir(self) -> Path | None:
        """Where runs sharing ``data.cache_dir`` keep tokenizers, keyed by what determines one."""
        if not self.data_cfg.cache_dir:
            return None
        key = {
            "data": data_identity(self.data_cfg, "train"),
            "tokenizer": asdict(self.tokenizer_cfg),
            "seed": self.seed,
        }
        digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]
        return self.cache_dir / "tokenizers" / digest

    def setup(self, stage: str | None = None) -> None:
        """Encoded splits, memory-mapped from the cache; ranks that start together build each once."""
        if self.tokenizer is None:
            self.prepare_tokenizer()
        workers = self.data_cfg.preprocess_workers
        if self.train_corpus is None and stage in (None, "fit"):
            self.train_corpus = prepare_split_arrow(
                self.data_cfg, "train", self.tokenizer, cache_dir=self.cache_dir, num_proc=workers
            )
        if self.valid_corpus is None and stage in (None, "fit", "validate"):
            self.valid_corpus = prepare_split_arrow(
                self.data_cfg, "valid", self.tokenizer, cache_dir=self.cache_dir, num_proc=workers
            )
            self.valid_references = raw_dataset(self.data_cfg, "valid", cache_dir=self.cache_dir)["tgt"]

    def _sampler(self, corpus: EncodedCorpus, split: str, *, shuffle: bool) -> TokenBatchSampler:
        trainer = self.trainer
        try:
            return TokenBatchSampler(
                corpus.src_lengths,
                corpus.tgt_lengths,
                self.data_cfg.max_tokens,
                shuffle=shuffle,
                seed=self.seed,
                num_replicas=trainer.world_size if trainer else 1,
                rank=trainer.global_rank if trainer else 0,
            )
        except ValueError as error:
            raise DataError(f"data {self.data_cfg.name!r} {split} split: {error}; raise data.max_tokens") from None

    def _loader(self, corpus: EncodedCorpus, split: str, *, shuffle: bool) -> DataLoader:
        sampler = self._sampler(corpus, split, shuffle=shuffle)
        # The training loader checkpoints its position; its own generator keeps the creation of an
        # iterator from drawing on the global RNG (which dropout uses), so resumed runs stay exact.
        loader_class = ResumableLoader if split == "train" else DataLoader
        return loader_class(
            PairDataset(corpus),
            batch_sampler=sampler,
            collate_fn=PairDataset.collate,
            num_workers=self.data_cfg.num_workers,
            persistent_workers=self.data_cfg.num_workers > 0,
            generator=torch.Generator().manual_seed(self.seed),
        )

    def train_dataloader(self) -> DataLoader:
        loader = self._loader(self.train_corpus, "train", shuffle=True)
        sampler = loader.batch_sampler
        log.info(
            "train: %d pairs, %d batches per epoch per rank, padding %.1f%% of positions",
            len(self.train_corpus),
            len(sampler),
            100 * sampler.padding_share(),
        )
        return loader

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.valid_corpus, "valid", shuffle=False)

    def transfer_batch_to_device(self, batch: Batch, device: torch.device, dataloader_idx: int) -> Batch:
        return batch.to(device)
