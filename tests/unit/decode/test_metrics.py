"""BLEU, chrF, TER, several references, target-language tokenizers and paired bootstrap, each against sacreBLEU's
own command line on the same files (the reference implementation, run as a user would)."""

from __future__ import annotations

import json
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest

from mt.decode.metrics import bleu, bleu_metric, chrf, metric_name, paired_bootstrap, scores, ter
from mt.errors import ConfigError, DataError

HYPOTHESES = ["The cat sat on the mat.", "A dog runs in the park!", "Hello, world.", "Two men are playing chess"]
REFERENCES = ["The cat is on the mat.", "A dog is running in the park!", "Hello world.", "Two men play chess ."]
SECOND = ["A cat sat on a mat.", "The dog runs through a park.", "Hello, world!", "Men are playing a game"]


def sacrebleu_cli(*args: str) -> str:
    """sacreBLEU's CLI (``python -m sacrebleu``: the entry point of the installed package), stdout."""
    result = subprocess.run([sys.executable, "-m", "sacrebleu", *args], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def write(path: Path, lines: list[str]) -> str:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return str(path)


def cli_scores(tmp_path: Path, hypotheses: list[str], *references: list[str], extra: tuple[str, ...] = ()) -> dict:
    files = [write(tmp_path / f"ref{k}.txt", r) for k, r in enumerate(references)]
    hyp = write(tmp_path / "hyp.txt", hypotheses)
    found = json.loads(sacrebleu_cli(*files, "-i", hyp, "-m", "bleu", "chrf", "ter", "-w", "4", *extra))
    return {entry["name"]: entry for entry in found}


@pytest.mark.parametrize("streams", [[REFERENCES], [REFERENCES, SECOND]], ids=["one-reference", "two-references"])
def test_bleu_chrf_and_ter_equal_sacrebleus_command_line(tmp_path, streams):
    theirs = cli_scores(tmp_path, HYPOTHESES, *streams)
    ours = scores(HYPOTHESES, streams)
    assert ours["bleu"] == pytest.approx(theirs["BLEU"]["score"], abs=0.006)
    assert ours["chrf"] == pytest.approx(theirs["chrF2"]["score"], abs=0.006)
    assert ours["ter"] == pytest.approx(theirs["TER"]["score"], abs=0.006)
    assert ours["bleu_signature"] == theirs["BLEU"]["signature"]
    assert ours["ter_signature"] == theirs["TER"]["signature"]
    assert ours["references"] == len(streams) and f"nrefs:{len(streams)}" in ours["bleu_signature"]


def test_a_second_reference_cannot_lower_bleu_or_chrf():
    """BLEU clips n-grams by the most generous reference and chrF takes each sentence's best: more references
    cannot lower them (TER can go either way: its edits are divided by the references' mean length)."""
    one, two = scores(HYPOTHESES, [REFERENCES]), scores(HYPOTHESES, [REFERENCES, SECOND])
    assert two["bleu"] > one["bleu"] and two["chrf"] > one["chrf"]


@pytest.mark.parametrize(("lang", "tokenizer"), [("zh", "zh"), ("ja", "ja-mecab"), ("ko", "ko-mecab"), ("de", "13a")])
def test_the_bleu_tokenizer_follows_the_target_language_as_in_sacrebleu(tmp_path, lang, tokenizer):
    pytest.importorskip("MeCab") if "mecab" in tokenizer else None
    hypotheses = {
        "zh": ["今天天气很好。", "我喜欢学习机器翻译。"],
        "ja": ["今日は良い天気です。", "私は機械翻訳を勉強するのが好きです。"],
        "ko": ["오늘은 날씨가 좋습니다.", "나는 기계 번역 공부를 좋아합니다."],
        "de": ["Heute ist schönes Wetter.", "Ich lerne gern maschinelle Übersetzung."],
    }[lang]
    references = {
        "zh": ["今天天气不错。", "我喜欢研究机器翻译。"],
        "ja": ["今日はいい天気です。", "私は機械翻訳の勉強が好きです。"],
        "ko": ["오늘 날씨가 좋네요.", "저는 기계 번역 공부를 좋아해요."],
        "de": ["Heute ist das Wetter schön.", "Ich lerne gerne maschinelle Übersetzung."],
    }[lang]
    ours = bleu(hypotheses, [references], tgt_lang=lang)
    assert f"tok:{tokenizer}" in ours.signature
    theirs = cli_scores(tmp_path, hypotheses, references, extra=("-l", f"en-{lang}"))["BLEU"]
    assert ours.score == pytest.approx(theirs["score"], abs=1e-4)
    assert ours.signature == theirs["signature"]
    # The tokenizer matters: 13a does not split Chinese or Japanese, so the score differs.
    if lang in ("zh", "ja"):
        assert bleu(hypotheses, [references], tgt_lang=lang, tokenize="13a").score != pytest.approx(ours.score)


@pytest.mark.parametrize(
    ("lang", "code"), [("cmn_Hans", "zh"), ("zho_Hant", "zh"), ("zh-TW", "zh"), ("yue", "zh"), ("jpn", "ja")]
)
def test_opus_mt_and_flores_names_get_sacrebleus_tokenizer_for_the_language(tmp_path, lang, code):
    """OPUS-MT's and FLORES's names of Chinese and Japanese score as sacreBLEU's ``-l en-zh`` / ``-l en-ja`` do,
    not with 13a."""
    pytest.importorskip("MeCab") if code == "ja" else None
    hypotheses, references = {
        "zh": (["今天天气很好。", "我喜欢学习机器翻译。"], ["今天天气不错。", "我喜欢研究机器翻译。"]),
        "ja": (
            ["今日は良い天気です。", "私は機械翻訳を勉強するのが好きです。"],
            ["今日はいい天気です。", "私は機械翻訳の勉強が好きです。"],
        ),
    }[code]
    ours = bleu(hypotheses, [references], tgt_lang=lang)
    theirs = cli_scores(tmp_path, hypotheses, references, extra=("-l", f"en-{code}"))["BLEU"]
    assert (ours.score, ours.signature) == (pytest.approx(theirs["score"], abs=1e-4), theirs["signature"])
    assert "tok:13a" not in ours.signature


def test_japanese_korean_and_others_under_iso_639_3_names():
    assert metric_name(None, "jpn") == "ja-mecab" and metric_name(None, "kor_Hang") == "ko-mecab"
    assert metric_name(None, "deu") == metric_name(None, "de_DE") == metric_name(None, None) == "13a"
    assert {metric_name(None, lang) for lang in ("jpn_Latn", "ja-Latn", "cmn_Latn", "kor_Latn")} == {"13a"}
    assert metric_name("char", "cmn_Hans") == "char"


def test_a_tokenizer_can_be_chosen_and_a_wrong_one_is_a_one_line_error():
    assert "tok:char" in bleu(HYPOTHESES, [REFERENCES], tgt_lang="de", tokenize="char").signature
    with pytest.raises(ConfigError, match=r"metrics.bleu_tokenize='nope': expected one of .*13a"):
        bleu_metric("en", "nope")


def test_misaligned_references_are_refused():
    with pytest.raises(DataError, match="reference 2 has 3 lines but there are 4 hypotheses"):
        chrf(HYPOTHESES, [REFERENCES, SECOND[:3]])
    with pytest.raises(TypeError, match="a list of reference streams"):
        ter(HYPOTHESES, REFERENCES)


def test_paired_bootstrap_equals_sacrebleus_paired_bs(tmp_path):
    """Same seed (sacreBLEU's default 12345), same resamples: the same means, intervals and p-values."""
    words = "a man woman dog child plays runs sits in on the park street water red blue ball with two".split()
    chooser = random.Random(3)
    references = [" ".join(chooser.choice(words) for _ in range(chooser.randint(5, 12))) for _ in range(80)]
    baseline = [" ".join(w for i, w in enumerate(r.split()) if i % 3 != 1) for r in references]
    system = [" ".join(w for i, w in enumerate(r.split()) if i % 5 != 2) for r in references]
    ours = paired_bootstrap(baseline, system, [references])
    table = sacrebleu_cli(
        write(tmp_path / "ref.txt", references),
        "-i",
        write(tmp_path / "baseline.txt", baseline),
        write(tmp_path / "system.txt", system),
        "--paired-bs",
        "-m",
        "bleu",
        "chrf",
        "-f",
        "text",
        "-w",
        "4",
    )
    numbers = re.findall(r"(\d+\.\d+) \((\d+\.\d+) ± (\d+\.\d+)\)", table)
    p_values = [float(p) for p in re.findall(r"p = (\d\.\d+)", table)]
    (b_bleu, b_chrf, s_bleu, s_chrf) = [tuple(map(float, n)) for n in numbers]
    for key, base, sys_ in (("bleu", b_bleu, s_bleu), ("chrf", b_chrf, s_chrf)):
        got = ours[key]
        assert (got["baseline"], got["baseline_mean"], got["baseline_ci95"]) == pytest.approx(base, abs=0.006)
        assert (got["system"], got["system_mean"], got["system_ci95"]) == pytest.approx(sys_, abs=0.006)
    assert [ours["bleu"]["p_value"], ours["chrf"]["p_value"]] == pytest.approx(p_values, abs=1e-4)
    assert ours["bleu"]["system"] > ours["bleu"]["baseline"]  # the system drops fewer words
    json.dumps(ours)  # plain numbers (sacreBLEU's own --format json fails on its float32 values)


def test_systems_that_differ_in_one_word_are_not_significantly_different():
    words = "a man woman dog child plays runs sits in on the park street water red blue ball with two".split()
    chooser = random.Random(5)
    references = [" ".join(chooser.choice(words) for _ in range(8)) for _ in range(60)]
    baseline = [" ".join(r.split()[:-1]) for r in references]
    system = list(baseline)
    system[0] = references[0]  # one word more, in one sentence of 60
    ours = paired_bootstrap(baseline, system, [references])
    assert 0 < ours["bleu"]["system"] - ours["bleu"]["baseline"] < 1
    assert ours["bleu"]["p_value"] > 0.05
