"""mt.export: the CTranslate2 model of a checkpoint decodes like mt's own search, token for token and
score for score, on every sentence.

How CTranslate2 4.x scores a hypothesis (``translate_batch``, greedy and beam search alike): the sum of
its tokens' log-probabilities, the EOS included, divided by ``length ** length_penalty``, where ``length``
counts that EOS. ``finalize_hypothesis_score`` in src/decoding.cc divides by ``std::pow(length,
length_penalty)`` with ``length`` the hypothesis' size; the search holds the EOS in its hypotheses while
it scores them (``DecodingOptions::include_eos_in_hypotheses`` defaults to true and ``run_translation``
leaves it so), and ``run_translation`` (src/models/sequence_to_sequence.cc) removes it only afterwards,
unless ``return_end_token``. That is mt's ``length_penalty_type="average"`` (``(len(tokens) + 1) **
alpha``), not GNMT's ``((5 + len) / 6) ** alpha``. The expected scores below are that formula written
out, not mt's ``length_penalty``.

Other settings make the two searches the same one: ``min_decoding_length=0`` (CTranslate2's default, 1,
forbids EOS at the first step and renormalises that step's distribution without it, which moves every
score by about 1e-3), one maximum length for both (``max_decoding_length=L`` decodes at most L tokens,
EOS included, as mt's ``max_len_a=0, max_len_b=L`` does) and ``return_end_token=True``, so that every
output shows the EOS it ended with.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from mt.data.batching import pad_sequences
from mt.data.tokenizer import EOS_ID, PAD_ID
from mt.decode.search import Hypothesis, beam_search, greedy_search
from mt.model.checkpoint import load_checkpoint
from tests.conftest import toy_pairs
from tests.helpers import ROOT, fit_tiny, tree_bytes

ctranslate2 = pytest.importorskip("ctranslate2")

TRAIN_STEPS = 600  # ~20 s on one core: the model then translates (nearly) every toy sentence right
SENTENCES = 24
# Outputs here are at most ~25 tokens: a limit of 64 cuts none off, and the tests check that.
MAX_LENGTH = 64
# A token's log-probability agrees to ~3e-7 between the two (fp32 both, measured), so a sum over at
# most MAX_LENGTH tokens to ~2e-5; CTranslate2's first-step renormalisation (min_decoding_length=1)
# or a lost or extra token would move it by 1e-3 or more.
LOG_PROB_TOL = 5e-5


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def exported(toy_corpus_dir, tmp_path_factory):
    directory = tmp_path_factory.mktemp("export")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # the same model whatever ran before
        _, trainer = fit_tiny(toy_corpus_dir, directory / "run", max_steps=TRAIN_STEPS)
    trainer.save_checkpoint(directory / "model.ckpt")
    result = subprocess.run(
        [sys.executable, "-m", "mt.export", f"checkpoint={directory / 'model.ckpt'}", f"output={directory / 'ct2'}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return directory / "model.ckpt", directory / "ct2"


@pytest.fixture(scope="module")
def both(exported):
    """mt's model and tokenizer, and the CTranslate2 translator of its export."""
    checkpoint, model_dir = exported
    return load_checkpoint(checkpoint), ctranslate2.Translator(str(model_dir), device="cpu", intra_threads=1)


def sources(module) -> tuple[list[list[str]], torch.Tensor, torch.Tensor]:
    """Source sentences as pieces (for CTranslate2) and as padded ids with EOS (for mt)."""
    sentences = [src for src, _ in toy_pairs(SENTENCES, seed=11)]
    ids = module.tokenizer.encode_src(sentences)
    pieces = [[module.tokenizer.src.id_to_piece(i) for i in sentence] for sentence in ids]
    src_ids = pad_sequences(ids, suffix=EOS_ID)
    return pieces, src_ids, src_ids == PAD_ID


def translate(translator, pieces, *, beam: int, alpha: float):
    return translator.translate_batch(
        pieces,
        beam_size=beam,
        num_hypotheses=beam,
        length_penalty=alpha,
        max_decoding_length=MAX_LENGTH,
        min_decoding_length=0,
        return_end_token=True,
        return_scores=True,
    )


def their_tokens(module, pieces: list[str]) -> list[int]:
    """A CTranslate2 output's ids without its EOS, which it must end with (one cut off at
    ``max_decoding_length`` has none)."""
    ids = [module.tokenizer.tgt.piece_to_id(piece) for piece in pieces]
    assert ids[-1:] == [EOS_ID] and EOS_ID not in ids[:-1], pieces
    return ids[:-1]


def check_ours(hyp: Hypothesis, alpha: float) -> None:
    """mt's output ended by the model's own EOS (mt forces one only as token MAX_LENGTH) and is scored
    by the formula."""
    assert len(hyp.tokens) + 1 < MAX_LENGTH
    assert hyp.score == pytest.approx(hyp.log_prob / (len(hyp.tokens) + 1) ** alpha, rel=1e-6)


def check_their_score(score: float, hyp: Hypothesis, alpha: float) -> None:
    """CTranslate2's score of the output ``hyp`` holds: mt's log-probability (EOS included) over
    ``(len + 1) ** alpha``, the length counting the EOS."""
    divisor = (len(hyp.tokens) + 1) ** alpha
    assert score == pytest.approx(hyp.log_prob / divisor, abs=LOG_PROB_TOL / divisor)


def test_the_model_translates(both):
    """A trained model, not a degenerate one, so that agreeing on its outputs means something."""
    module, _ = both
    pairs = toy_pairs(SENTENCES, seed=11)
    _, src_ids, src_pad_mask = sources(module)
    ours = greedy_search(module.model, src_ids, src_pad_mask, max_len_a=0.0, max_len_b=MAX_LENGTH)
    outputs = module.tokenizer.decode_tgt([hyp.tokens for hyp in ours])
    assert sum(output == tgt for output, (_, tgt) in zip(outputs, pairs)) >= SENTENCES * 5 // 6, outputs


@pytest.mark.parametrize("alpha", [0.0, 1.0])
def test_ctranslate2_greedy_equals_mt_greedy(both, alpha):
    module, translator = both
    pieces, src_ids, src_pad_mask = sources(module)
    ours = greedy_search(
        module.model,
        src_ids,
        src_pad_mask,
        max_len_a=0.0,
        max_len_b=MAX_LENGTH,
        length_penalty_alpha=alpha,
        length_penalty_type="average",
    )
    theirs = translate(translator, pieces, beam=1, alpha=alpha)
    assert len(ours) == len(theirs) == SENTENCES
    for hyp, result in zip(ours, theirs):
        check_ours(hyp, alpha)
        assert their_tokens(module, result.hypotheses[0]) == hyp.tokens
        check_their_score(result.scores[0], hyp, alpha)


@pytest.mark.parametrize(("beam", "alpha"), [(4, 0.0), (4, 1.0), (5, 1.0)])
def test_ctranslate2_beam_equals_mt_beam(both, beam, alpha):
    """The best output of every sentence, and the score of every output both searches found.

    Only the best is compared position by position: when several hypotheses end at the step that
    completes a source's ``beam``, mt keeps ``beam`` and CTranslate2 all of them, so the last places
    of the n-best lists may differ (the best cannot: those hypotheses have one length, so the one mt
    keeps outscores the ones it drops)."""
    module, translator = both
    pieces, src_ids, src_pad_mask = sources(module)
    ours = beam_search(
        module.model,
        src_ids,
        src_pad_mask,
        beam=beam,
        nbest=beam,
        length_penalty_alpha=alpha,
        length_penalty_type="average",
        max_len_a=0.0,
        max_len_b=MAX_LENGTH,
    )
    theirs = translate(translator, pieces, beam=beam, alpha=alpha)
    assert len(ours) == len(theirs) == SENTENCES
    for hyps, result in zip(ours, theirs):
        # Every finished hypothesis, not just the best: a source that reached the limit would have
        # forced-EOS ones in mt's list and cut-off ones among CTranslate2's (fewer than `beam` ended).
        assert len(hyps) == len(result.hypotheses) == beam
        for hyp in hyps:
            check_ours(hyp, alpha)
        found = [their_tokens(module, output) for output in result.hypotheses]
        assert found[0] == hyps[0].tokens
        by_tokens = {tuple(hyp.tokens): hyp for hyp in hyps}
        for tokens, score in zip(found, result.scores):
            if tuple(tokens) in by_tokens:
                check_their_score(score, by_tokens[tuple(tokens)], alpha)


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


def _export_cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "mt.export", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


def test_export_overwrite_never_replaces_a_run_directory_or_the_checkpoints(exported, tmp_path):
    """overwrite=true replaces an empty directory or an earlier export only: a run directory and its checkpoints
    folder (which hold the input), another run's directory, an export with a file of someone else's are refused
    in one line and left as they were."""
    from mt.errors import RunError
    from mt.export import export_ctranslate2

    model_ckpt, model_dir = exported
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "tokenizer").mkdir()
    checkpoint = run / "checkpoints/best.ckpt"
    checkpoint.write_bytes(model_ckpt.read_bytes())
    (run / "config.yaml").write_text("model:\n  d_model: 32\n")
    (run / "tokenizer/spm.model").write_bytes(b"spm")
    before = tree_bytes(run)
    result = _export_cli(f"checkpoint={checkpoint}", f"output={run}", "overwrite=true")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: output={run}: holds the input {checkpoint}; choose another output"
    ]
    with pytest.raises(RunError, match=rf"^output={run}/checkpoints: holds the input {checkpoint}; choose another"):
        export_ctranslate2(checkpoint, run / "checkpoints")
    with pytest.raises(
        RunError,
        match=rf"^output={run}: not a previous CTranslate2 export \(it holds checkpoints/, config.yaml\); "
        r"choose another output$",
    ):
        export_ctranslate2(model_ckpt, run)  # another checkpoint: the run directory is still not an export
    assert tree_bytes(run) == before

    # An earlier export is replaced whole; one with a file of someone else's is not.
    earlier = tmp_path / "ct2"
    earlier.mkdir()
    for name, payload in tree_bytes(model_dir).items():
        (earlier / name).parent.mkdir(exist_ok=True)
        (earlier / name).write_bytes(payload)
    assert json.loads((earlier / "mt_export.json").read_text())["checkpoint"] == str(model_ckpt)
    result = _export_cli(f"checkpoint={checkpoint}", f"output={earlier}", "overwrite=true")
    assert result.returncode == 0, result.stderr
    assert json.loads((earlier / "mt_export.json").read_text())["checkpoint"] == str(checkpoint)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ct2", "run"]  # no temporaries left
    (earlier / "notes.txt").write_text("mine")
    kept = tree_bytes(earlier)
    with pytest.raises(RunError, match=r"not a previous CTranslate2 export \(it holds notes.txt\)"):
        export_ctranslate2(model_ckpt, earlier)
    assert tree_bytes(earlier) == kept
    (tmp_path / "empty").mkdir()
    export_ctranslate2(model_ckpt, tmp_path / "empty")
    assert (tmp_path / "empty/model.bin").is_file()
