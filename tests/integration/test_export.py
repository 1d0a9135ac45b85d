"""mt.export: the CTranslate2 model of a checkpoint decodes like mt's own search."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from mt.data.tokenizer import EOS_ID, PAD_ID
from mt.decode.search import beam_search, greedy_search
from mt.model.checkpoint import load_checkpoint
from tests.conftest import toy_pairs
from tests.helpers import ROOT, fit_tiny

ctranslate2 = pytest.importorskip("ctranslate2")


@pytest.fixture(scope="module")
def exported(toy_corpus_dir, tmp_path_factory):
    directory = tmp_path_factory.mktemp("export")
    _, trainer = fit_tiny(toy_corpus_dir, directory / "run", max_steps=60)
    trainer.save_checkpoint(directory / "model.ckpt")
    result = subprocess.run(
        [sys.executable, "-m", "mt.export", f"checkpoint={directory / 'model.ckpt'}", f"output={directory / 'ct2'}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return directory / "model.ckpt", directory / "ct2"


def sources(module, count: int = 24) -> tuple[list[list[str]], torch.Tensor, torch.Tensor]:
    """Source sentences as pieces (for CTranslate2) and as padded ids with EOS (for mt)."""
    from mt.data.batching import pad_sequences

    sentences = [src for src, _ in toy_pairs(count, seed=11)]
    ids = module.tokenizer.encode_src(sentences)
    pieces = [[module.tokenizer.src.id_to_piece(i) for i in sentence] for sentence in ids]
    src_ids = pad_sequences(ids, suffix=EOS_ID)
    return pieces, src_ids, src_ids == PAD_ID


def test_ctranslate2_greedy_equals_mt_greedy(exported):
    checkpoint, model_dir = exported
    module = load_checkpoint(checkpoint)
    pieces, src_ids, src_pad_mask = sources(module)
    # CTranslate2 stops after 40 tokens; mt's maximum counts the EOS it then forces: 41.
    ours = greedy_search(module.model, src_ids, src_pad_mask, max_len_a=0.0, max_len_b=41)
    translator = ctranslate2.Translator(str(model_dir), device="cpu")
    theirs = translator.translate_batch(pieces, beam_size=1, max_decoding_length=40, return_scores=True)
    for hyp, result in zip(ours, theirs):
        tokens = [module.tokenizer.tgt.piece_to_id(p) for p in result.hypotheses[0]]
        assert tokens == hyp.tokens
        if len(tokens) < 40:  # a cut-off output has no EOS there, and so another score
            assert result.scores[0] == pytest.approx(hyp.log_prob / (len(hyp.tokens) + 1), abs=1e-3)


def test_ctranslate2_beam_equals_mt_beam_without_length_penalty(exported):
    checkpoint, model_dir = exported
    module = load_checkpoint(checkpoint)
    pieces, src_ids, src_pad_mask = sources(module)
    ours = beam_search(
        module.model, src_ids, src_pad_mask, beam=4, length_penalty_type="none", max_len_a=0.0, max_len_b=41
    )
    translator = ctranslate2.Translator(str(model_dir), device="cpu")
    theirs = translator.translate_batch(
        pieces, beam_size=4, length_penalty=0.0, max_decoding_length=40, return_scores=True
    )
    # Outputs cut off at the maximum length end differently (mt forces and scores an EOS there,
    # CTranslate2 stops), which can change the ranking: compare the sentences that finished.
    finished = [(hyps[0].tokens, result) for hyps, result in zip(ours, theirs) if len(hyps[0].tokens) < 40]
    assert len(finished) >= len(ours) // 2
    for tokens, result in finished:
        assert [module.tokenizer.tgt.piece_to_id(p) for p in result.hypotheses[0]] == tokens


def test_export_refuses_an_existing_output(exported):
    checkpoint, model_dir = exported
    result = subprocess.run(
        [sys.executable, "-m", "mt.export", f"checkpoint={checkpoint}", f"output={model_dir}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert (
        result.returncode == 2
        and result.stderr.strip() == f"error: {model_dir} exists; pass overwrite=true to replace it"
    )
