"""Several corpora in one run: resume mid-epoch stays exact, a model of two directions validates, translates,
evaluates and reports each one, and a language it was not trained on is refused in one line."""

from __future__ import annotations

import csv
import json
import random
import subprocess
import sys

import pytest
import torch

import mt.decode.translator
from mt.decode.scoring import score_checkpoint
from mt.model.checkpoint import load_checkpoint
from mt.training.run import train
from tests.conftest import tiny_train_config, toy_pairs, write_text_corpus
from tests.helpers import ROOT, losses
from tests.integration.test_resume import KillAt, Killed, assert_same_run, with_callback


@pytest.fixture(scope="module")
def synthetic_dir(tmp_path_factory):
    """A second corpus of the toy language (another sample), with a training split only."""
    return write_text_corpus(tmp_path_factory.mktemp("synthetic"), {"train": toy_pairs(150, seed=7)})


@pytest.fixture(scope="module")
def varied_dir(tmp_path_factory):
    """A second corpus of 120 pairs, a third of them three toy pairs joined: drawn anew each epoch, the epochs'
    pairs batch into different numbers of batches."""
    pairs, rng, joined = toy_pairs(400, seed=7), random.Random(0), []
    while len(joined) < 120:
        k = rng.choice([1, 1, 3])
        part, pairs = pairs[:k], pairs[k:]
        joined.append((" ".join(s for s, _ in part), " ".join(t for _, t in part)))
    return write_text_corpus(tmp_path_factory.mktemp("varied"), {"train": joined})


def mixture_run(data_dir, synthetic, run_dir, max_steps, resume=None, weight=1.0, validate=False):
    config = tiny_train_config(
        data_dir,
        **{
            "data.corpora": [
                {"weight": 1.0},
                {"path": str(synthetic), "weight": weight, "tag": "<BT>", "valid": False},
            ],
            "data.max_tokens": 600,
            "trainer.max_steps": max_steps,
            "trainer.log_every_n_steps": 1,
            # last.ckpt after every update; or, validating (the loss) at each epoch's end, after each validation
            "trainer.checkpoint_every_n_steps": None if validate else 1,
            "trainer.limit_val_batches": None if validate else 0,
            "model.dropout": 0.2,
            "validation.decode": "none",
            "test_after_training": False,
            "resume": resume,
        },
    )
    train(config, run_dir)


def epoch_lengths(run_dir) -> list[int]:
    """The updates of each epoch of a run, from its logged losses (the last epoch may be cut short)."""
    rows = [r for r in csv.DictReader(open(run_dir / "csv/metrics.csv")) if r.get("train/loss")]
    epochs = [int(r["epoch"]) for r in rows]
    return [epochs.count(e) for e in range(max(epochs) + 1)]


KILLS = ["inside the second epoch", "after an epoch's validation, the next shorter", "after an epoch's last batch"]


@pytest.mark.parametrize("kill", KILLS)
def test_resume_with_two_weighted_corpora_equals_the_uninterrupted_run(
    toy_corpus_dir, synthetic_dir, varied_dir, tmp_path, monkeypatch, kill
):
    """Two corpora, each epoch with its own draw. Drawn 1:1 (the second, 150 pairs, upsampled to 275 an epoch and
    tagged), an epoch is 18 batches and the killed run stops inside the second, with a checkpoint after every
    update. Drawn 1:3 from a corpus of varied lengths, the epochs have 26, 25, ... batches, and the run is killed
    in the second epoch after a checkpoint of the first one's end: of its validation (validated at each epoch's
    end), or of its last batch (a checkpoint after every update). The trainer, restored at that epoch's end, must
    not take a batch of the shorter next epoch for one of the old (it trained one more, and the next epoch's
    first batch twice)."""
    inside, validate = kill == KILLS[0], kill == KILLS[1]
    second, weight, steps = (synthetic_dir, 1.0, 50) if inside else (varied_dir, 3.0, 60)
    options = {"weight": weight, "validate": validate}
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    mixture_run(toy_corpus_dir, second, straight, steps, **options)
    lengths = epoch_lengths(straight)
    if inside:
        at = kill_at = lengths[0] + 7
    else:
        assert lengths[0] > lengths[1] and len(lengths) == 3, lengths  # what the case is about
        at, kill_at = lengths[0], lengths[0] + (4 if validate else 0)
    with_callback(monkeypatch, KillAt(kill_at))
    with pytest.raises(Killed):
        mixture_run(toy_corpus_dir, second, resumed, steps, **options)
    monkeypatch.undo()
    assert torch.load(resumed / "checkpoints/last.ckpt", weights_only=False)["global_step"] == at
    mixture_run(toy_corpus_dir, second, resumed, steps, resume="auto", **options)
    assert_same_run(straight, resumed, steps)
    assert len(losses(straight / "csv/metrics.csv")) == steps


@pytest.fixture(scope="module")
def two_directions(toy_corpus_dir, tmp_path_factory):
    """A tiny model of de→en and en→de on the toy corpus, with target-language tokens, and the de→en pairs once
    more as a tagged corpus (as back-translated data would be); validated every 10 steps."""
    run_dir = tmp_path_factory.mktemp("two_directions")
    config = tiny_train_config(
        toy_corpus_dir,
        **{
            "data.corpora": [
                {"src_lang": "de", "tgt_lang": "en"},
                {"src_lang": "en", "tgt_lang": "de"},
                {"name": "tagged", "src_lang": "de", "tgt_lang": "en", "tag": "<BT>", "valid": False},
            ],
            "data.lang_tokens": True,
            "trainer.max_steps": 20,
            "trainer.val_check_interval": 10,
            "trainer.check_val_every_n_epoch": None,
            "trainer.log_every_n_steps": 1,
            "test_after_training": False,
        },
    )
    train(config, run_dir)
    return run_dir, config


def test_each_direction_is_validated_and_selection_uses_their_mean(two_directions):
    run_dir, _ = two_directions
    rows = [r for r in csv.DictReader(open(run_dir / "csv/metrics.csv")) if r.get("val/bleu")]
    assert len(rows) == 2  # steps 10 and 20
    for row in rows:
        each = [float(row["val/bleu/de-en"]), float(row["val/bleu/en-de"])]
        assert float(row["val/bleu"]) == pytest.approx(sum(each) / 2, abs=1e-4)
        chrf = [float(row["val/chrf/de-en"]), float(row["val/chrf/en-de"])]
        assert float(row["val/chrf"]) == pytest.approx(sum(chrf) / 2, abs=1e-4)
    best = torch.load(run_dir / "checkpoints/best.ckpt", weights_only=False)
    assert best["val_metrics"]["val/bleu"] == pytest.approx(max(float(r["val/bleu"]) for r in rows), abs=1e-4)


def test_sources_start_with_the_target_language_token(two_directions, toy_corpus_dir):
    run_dir, config = two_directions
    tokenizer = load_checkpoint(run_dir / "checkpoints/last.ckpt").tokenizer
    tokens = tokenizer.language_tokens()
    assert set(tokens) == {"de", "en"}
    from mt.training.datamodule import TranslationDataModule

    datamodule = TranslationDataModule(config.data, config.tokenizer, run_dir=run_dir, seed=config.seed)
    datamodule.setup("fit")
    (de_en, en_de, tagged), text = datamodule.train_corpora, toy_pairs(400, seed=1)
    tag = tokenizer.symbol_id("<BT>")
    for corpus, prefix, side in (
        (de_en, [tokens["en"]], 0),
        (en_de, [tokens["de"]], 1),
        (tagged, [tokens["en"], tag], 0),
    ):
        for i in (0, len(corpus) - 1):
            ids = list(corpus.src(i))
            assert ids == prefix + tokenizer.encode_src([text[corpus.index[i]][side]])[0]
    assert [s.name for s in datamodule.valid_sets] == ["de-en", "en-de"]  # the tagged corpus is not validated
    assert tag not in datamodule.valid_sets[0].corpus.src_tokens


def test_evaluate_reads_the_direction_asked_for_and_puts_its_token_first(two_directions, monkeypatch):
    run_dir, _ = two_directions
    seen = []
    decode_ids = mt.decode.translator.decode_ids

    def recording(model, src, *args, **kwargs):
        seen.extend(list(ids) for ids in src)
        return decode_ids(model, src, *args, **kwargs)

    monkeypatch.setattr(mt.decode.translator, "decode_ids", recording)
    checkpoint = load_checkpoint(run_dir / "checkpoints/last.ckpt")
    result = score_checkpoint(run_dir / "checkpoints/last.ckpt", tgt_lang="de", progress=False)
    english = [en for _, en in toy_pairs(40, seed=3)]
    assert result["data"].endswith("test (en-de)") and result["sentences"] == 40
    assert seen == [
        [checkpoint.tokenizer.language_tokens()["de"], *ids] for ids in checkpoint.tokenizer.encode_src(english)
    ]
    assert "tok:13a" in result["bleu_signature"]


def test_a_language_the_model_was_not_trained_on_is_refused_in_one_line(two_directions):
    run_dir, _ = two_directions
    command = [sys.executable, "-m", "mt.translate", f"checkpoint={run_dir / 'checkpoints/last.ckpt'}"]
    for extra, message in (
        (["tgt_lang=fr"], "tgt_lang=fr: {} was trained to translate into de, en only"),
        ([], "{} translates into de, en: say which with tgt_lang="),
    ):
        result = subprocess.run(
            command + extra, cwd=ROOT, input="Der hund sieht der katze.\n", capture_output=True, text=True, timeout=120
        )
        assert result.returncode != 0 and result.stdout == "" and "Traceback" not in result.stderr
        lines = result.stderr.strip().splitlines()
        assert lines[-1].endswith(message.format(run_dir / "checkpoints/last.ckpt")), result.stderr


def test_translation_never_writes_a_tag_or_language_token(two_directions):
    run_dir, _ = two_directions
    checkpoint = load_checkpoint(run_dir / "checkpoints/last.ckpt")
    from mt.config import SearchConfig
    from mt.decode.translator import translate

    sources = [de for de, _ in toy_pairs(20, seed=9)]
    tokens = checkpoint.tokenizer.language_tokens()
    search = SearchConfig(beam=2, nbest=2)
    prefix = [tokens["en"], checkpoint.tokenizer.symbol_id("<BT>")]
    out = translate(checkpoint.model, checkpoint.tokenizer, sources, search, src_prefix=prefix)
    texts = [text for nbest in out for text, _ in nbest]
    assert len(texts) == 40 and not any("<2" in t or "<BT>" in t for t in texts)
    # Even output made of language tokens only is text without them.
    assert checkpoint.tokenizer.decode_tgt([[tokens["de"], prefix[1], tokens["en"]] * 3]) == [""]


def test_report_tables_checkpoints_by_direction(two_directions, tmp_path):
    run_dir, _ = two_directions
    command = [sys.executable, "-m", "mt.report", f"run={run_dir}", f"output_dir={tmp_path}", "search.beam=1"]
    subprocess.run(command, cwd=ROOT, check=True, capture_output=True, timeout=300)
    report = json.loads((tmp_path / "report.json").read_text())
    assert [t["name"] for t in report["test_sets"]] == ["test de-en", "test en-de"]
    markdown = (tmp_path / "report.md").read_text()
    assert "| checkpoint | test de-en | test en-de | mean |" in markdown
    for row in report["rows"]:
        values = (row["test de-en"]["bleu"], row["test en-de"]["bleu"])
        assert f"| {row['checkpoint']} | {values[0]:.2f} | {values[1]:.2f} | {sum(values) / 2:.2f} |" in markdown


def test_report_of_files_without_tgt_lang_is_refused_before_decoding(two_directions, tmp_path, monkeypatch):
    """``sources=`` to a model of several target languages without ``tgt_lang``: refused before any decode (it
    decoded every direction's test set of the first checkpoint first)."""
    import mt.report
    from mt.config import ReportConfig, SearchConfig
    from mt.errors import ConfigError

    run_dir, _ = two_directions
    (tmp_path / "x.de").write_text("Der hund.\n")
    (tmp_path / "x.en").write_text("The dog.\n")

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded")

    monkeypatch.setattr(mt.report, "load_checkpoint", no_decoding)
    config = ReportConfig(
        run=str(run_dir), sources=[str(tmp_path / "x.de")], references=[str(tmp_path / "x.en")], search=SearchConfig()
    )
    with pytest.raises(ConfigError, match=r"translates into de, en: say which with tgt_lang="):
        mt.report.build_report(config)


def test_a_corpus_folder_that_is_missing_is_named_by_its_entry(toy_corpus_dir, tmp_path):
    """It was reported as ``data.path=...``, which the user had not set."""
    from mt.errors import DataError

    corpora = [{}, {"path": str(tmp_path / "nope"), "valid": False}]
    config = tiny_train_config(toy_corpus_dir, **{"data.corpora": corpora, "test_after_training": False})
    with pytest.raises(DataError, match=rf"^data.corpora\[1\].path={tmp_path / 'nope'}: no such directory$"):
        train(config, tmp_path / "run")
    corpora[1] = {"hub_name": str(tmp_path / "gone"), "valid": False}  # a dataset folder, as mt.train records one
    config = tiny_train_config(toy_corpus_dir, **{"data.corpora": corpora, "test_after_training": False})
    with pytest.raises(DataError, match=rf"^data.corpora\[1\].hub_name={tmp_path / 'gone'}: no such folder"):
        train(config, tmp_path / "run")


def test_evaluate_and_report_name_the_entry_of_a_corpus_folder_that_moved(two_directions, tmp_path):
    """A checkpoint whose en-de corpus (``data.corpora[1]``) was read from a folder that is gone: scoring that
    direction's test split said ``data.path=...``, a key the run never set."""
    import mt.report
    from mt.config import ReportConfig, SearchConfig
    from mt.decode.scoring import score_checkpoint
    from mt.errors import DataError

    run_dir, _ = two_directions
    stored = torch.load(run_dir / "checkpoints/last.ckpt", weights_only=False)
    stored["hyper_parameters"]["data"]["corpora"][1]["path"] = str(tmp_path / "moved")
    moved_run = tmp_path / "run"
    (moved_run / "checkpoints").mkdir(parents=True)
    torch.save(stored, moved_run / "checkpoints/last.ckpt")
    expected = rf"^data.corpora\[1\].path={tmp_path / 'moved'}: no such directory \(as "
    with pytest.raises(DataError, match=expected + r".*last.ckpt records it: the data moved\? pass source= and"):
        score_checkpoint(moved_run / "checkpoints/last.ckpt", src_lang="en", tgt_lang="de", progress=False)
    with pytest.raises(DataError, match=expected + r"the checkpoints record it: .* pass sources= and references=\)$"):
        mt.report.build_report(ReportConfig(run=str(moved_run), search=SearchConfig(beam=1)))
