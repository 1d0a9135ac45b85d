"""Ensembles: one member equals the model alone; several average their log-probabilities in the search."""

from __future__ import annotations

import gzip
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.testing import assert_close

from mt.config import SearchConfig
from mt.data.tokenizer import BOS_ID, EOS_ID
from mt.decode.scoring import score_checkpoint
from mt.decode.search import beam_search, greedy_search
from mt.decode.translator import translate
from mt.errors import CheckpointError
from mt.model.checkpoint import load_checkpoint, load_translator
from mt.model.ensemble import Ensemble
from tests.conftest import random_batch, random_model, toy_pairs, write_text_corpus
from tests.helpers import ROOT, fit_tiny


def test_an_ensemble_of_one_equals_the_model_alone():
    model = random_model(3)
    src_ids, src_pad_mask = random_batch(4, [5, 9, 2])
    alone = beam_search(model, src_ids, src_pad_mask, beam=4, nbest=3)
    ensemble = beam_search(Ensemble([model]), src_ids, src_pad_mask, beam=4, nbest=3)
    assert alone == ensemble  # tokens, scores and log-probabilities


def test_two_copies_of_a_model_equal_the_model_alone():
    model = random_model(3)
    src_ids, src_pad_mask = random_batch(4, [5, 9, 2])
    alone = beam_search(model, src_ids, src_pad_mask, beam=3)
    twice = beam_search(Ensemble([model, model]), src_ids, src_pad_mask, beam=3)
    assert [h[0].tokens for h in twice] == [h[0].tokens for h in alone]
    assert [h[0].score for h in twice] == pytest.approx([h[0].score for h in alone], abs=1e-5)


def test_ensemble_scores_are_the_teacher_forced_mean_of_its_members():
    """Each hypothesis's log-probability equals the sum over its steps of the renormalised mean of
    the members' teacher-forced log-probabilities (the cached, batched search agrees with the definition)."""
    members = [random_model(11, vocab=30), random_model(12, vocab=30), random_model(13, vocab=30)]
    src_ids, src_pad_mask = random_batch(5, [4, 7, 3], vocab=30)
    results = beam_search(
        Ensemble(members), src_ids, src_pad_mask, beam=3, nbest=3, length_penalty_alpha=0.0, length_penalty_type="none"
    )
    for row, nbest in enumerate(results):
        for hyp in nbest:
            tgt = torch.tensor([[BOS_ID, *hyp.tokens, EOS_ID]])
            src, mask = src_ids[row : row + 1], src_pad_mask[row : row + 1]
            per_member = [torch.log_softmax(m(src, mask, tgt[:, :-1]).float(), -1)[0] for m in members]
            mean = torch.stack(per_member).mean(0)  # the log-linear mixture, renormalised, written out here
            mixture = mean - torch.logsumexp(mean, dim=-1, keepdim=True)
            forced = mixture.gather(-1, tgt[0, 1:, None]).sum().item()
            assert hyp.log_prob == pytest.approx(forced, abs=1e-4)


def test_ensemble_differs_from_each_member_and_greedy_runs():
    members = [random_model(21, vocab=30), random_model(22, vocab=30)]
    src_ids, src_pad_mask = random_batch(6, [6, 6, 6, 6], vocab=30)
    step = [
        m.decode_step(torch.full((4, 1), BOS_ID), m.encode(src_ids, src_pad_mask), src_pad_mask)[0] for m in members
    ]
    ensemble = Ensemble(members)
    log_probs, _ = ensemble.decode_step(
        torch.full((4, 1), BOS_ID), ensemble.encode(src_ids, src_pad_mask), src_pad_mask
    )
    assert_close(log_probs.exp().sum(-1), torch.ones(4))
    assert not torch.allclose(log_probs, step[0]) and not torch.allclose(log_probs, step[1])
    hyps = greedy_search(ensemble, src_ids, src_pad_mask, max_len_a=0.0, max_len_b=8)
    assert all(len(h.tokens) <= 8 and EOS_ID not in h.tokens for h in hyps)


def test_evaluate_and_translate_decode_an_ensemble_of_checkpoints(toy_corpus_dir, tmp_path):
    torch.manual_seed(1)  # fixed initialisations: the outputs compared below are the same in every run
    first, trainer = fit_tiny(toy_corpus_dir, tmp_path / "run", max_steps=10)
    trainer.save_checkpoint(tmp_path / "a.ckpt")
    torch.manual_seed(2)
    _, trainer = fit_tiny(toy_corpus_dir, tmp_path / "run", max_steps=20)  # same run dir: same tokenizer
    trainer.save_checkpoint(tmp_path / "b.ckpt")
    a, b = str(tmp_path / "a.ckpt"), str(tmp_path / "b.ckpt")

    # The reference: the two models loaded one by one and put in an Ensemble here, decoded with the same search.
    search = SearchConfig(beam=2)
    member_a, member_b = load_checkpoint(a), load_checkpoint(b)

    def decode(model, sentences: list[str]) -> list[str]:
        return [nbest[0][0] for nbest in translate(model.eval(), member_a.tokenizer, sentences, search)]

    pair = Ensemble([member_a.model, member_b.model])
    with gzip.open(toy_corpus_dir / "test.de.gz", "rt", encoding="utf-8") as handle:
        sources = handle.read().split("\n")[:-1]
    expected, single = decode(pair, sources), decode(member_a.model, sources)
    assert expected != single and expected != decode(member_b.model, sources)  # both members count

    files = {"source": str(toy_corpus_dir / "test.de.gz"), "references": [str(toy_corpus_dir / "test.en.gz")]}
    outputs = {name: str(tmp_path / f"{name}.txt") for name in ("alone", "twice", "both")}
    alone = score_checkpoint(a, search=search, progress=False, output=outputs["alone"], **files)
    twice = score_checkpoint(a, search=search, progress=False, ensemble=[a], output=outputs["twice"], **files)
    both = score_checkpoint(a, search=search, progress=False, ensemble=[b], output=outputs["both"], **files)
    written = {name: Path(path).read_text(encoding="utf-8").split("\n")[:-1] for name, path in outputs.items()}
    assert written["alone"] == single
    assert written["twice"] == written["alone"] and twice["bleu"] == alone["bleu"]
    assert written["both"] == expected
    assert both["ensemble"] == [a, b] and both["sentences"] == 40

    lines = ["Der hund sieht der ball.", "", "Die frau mag der baum."]
    assert decode(pair, lines) != decode(member_a.model, lines)
    result = subprocess.run(
        [sys.executable, "-m", "mt.translate", f"checkpoint={a}", f"ensemble=[{b}]", "beam=2"],
        input="".join(line + "\n" for line in lines),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split("\n")[:-1] == decode(pair, lines)  # the empty line's translation is empty

    other_data = write_text_corpus(tmp_path / "data2", {"train": toy_pairs(300, seed=9), "valid": toy_pairs(10)})
    _, trainer = fit_tiny(other_data, tmp_path / "other", max_steps=2)
    trainer.save_checkpoint(tmp_path / "c.ckpt")
    with pytest.raises(CheckpointError, match="c.ckpt: its tokenizer differs"):
        load_translator(a, [str(tmp_path / "c.ckpt")])
