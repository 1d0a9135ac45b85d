"""Hugging Face Marian (OPUS-MT) import and export against ``transformers`` itself.

The reference is ``MarianMTModel`` / ``MarianTokenizer`` of the installed ``transformers``: a small model with
random weights, a random non-zero final logits bias, OPUS-MT's special ids (eos 0, pad V-1, decoding starts
from pad), separate source and target SentencePiece models trained on a Multi30k slice (with SentencePiece's
own ids, as OPUS-MT's are), and a ``vocab.json`` in an order of its own that lacks a few of their pieces
(which both tokenizers must turn into <unk>), saved with ``save_pretrained``. Nothing is downloaded.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import sentencepiece as spm
import torch

from mt.convert import convert
from mt.data.batching import pad_sequences
from mt.data.tokenizer import EOS_ID, PAD_ID
from mt.decode.search import beam_search, greedy_search
from mt.model.checkpoint import load_checkpoint, read_checkpoint
from mt.model.marian import positions_in_halves
from tests.helpers import ROOT, toy_args, tree_bytes

transformers = pytest.importorskip("transformers")

SENTENCES = [
    "Ein Mann mit einem orangefarbenen Hut, der etwas anstarrt.",
    "Zwei Hunde spielen im Schnee.",
    "Eine Frau in einem roten Kleid geht über die Straße.",
    "Kinder.",
    "Ein kleines Mädchen klettert in ein Spielhaus aus Holz.",
    "Drei Leute sitzen in einer Höhle.",
]
MAX_NEW = 30  # generate(max_new_tokens=30); mt: max_len_a=0, max_len_b=max_len=30 (EOS counted by both)


def _multi30k_lines(language: str, count: int) -> list[str]:
    root = os.environ.get("MT_DATA_DIR")
    if not root or not Path(root, f"train.{language}.gz").is_file():
        pytest.skip("MT_DATA_DIR does not point at Multi30k")
    with gzip.open(Path(root, f"train.{language}.gz"), "rt", encoding="utf-8") as handle:
        return [next(handle).strip() for _ in range(count)]


def _train_spm(lines: list[str], path: Path, size: int) -> None:
    # SentencePiece's default ids (unk 0, bos 1, eos 2, no pad), as OPUS-MT's source.spm and target.spm have.
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_prefix=str(path.with_suffix("")), vocab_size=size, minloglevel=2
    )
    path.with_suffix(".model").rename(path)


@pytest.fixture(scope="module")
def marian_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("opus_mt")
    _train_spm(_multi30k_lines("de", 3000), directory / "source.spm", 400)
    _train_spm(_multi30k_lines("en", 3000), directory / "target.spm", 300)
    pieces: list[str] = []
    for name in ("source.spm", "target.spm"):
        processor = spm.SentencePieceProcessor(model_file=str(directory / name))
        pieces += [processor.id_to_piece(i) for i in range(3, processor.get_piece_size())]
    pieces = sorted(set(pieces))
    random.Random(0).shuffle(pieces)  # an order of its own, not SentencePiece's
    dropped = {"▁Hund", "▁Mann", "s"} & set(pieces)  # absent from vocab.json: <unk> for both tokenizers
    assert len(dropped) == 3
    marian_vocab = ["</s>", "<unk>", *(p for p in pieces if p not in dropped), "<pad>"]
    size = len(marian_vocab)
    (directory / "vocab.json").write_text(json.dumps({p: i for i, p in enumerate(marian_vocab)}, ensure_ascii=False))
    (directory / "tokenizer_config.json").write_text(json.dumps({"source_lang": "de", "target_lang": "en"}))

    config = transformers.MarianConfig(
        vocab_size=size,
        decoder_vocab_size=size,
        d_model=32,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        activation_function="swish",
        scale_embedding=True,
        max_position_embeddings=128,
        pad_token_id=size - 1,
        eos_token_id=0,
        forced_eos_token_id=0,
        decoder_start_token_id=size - 1,
        dropout=0.0,
    )
    torch.manual_seed(0)
    model = transformers.MarianMTModel(config)
    # A random model's greedy output loops until the length limit; 200 updates on the slice (~18 s) make
    # outputs of several lengths that end, so the search comparisons below are not vacuous.
    tokenizer = transformers.MarianTokenizer.from_pretrained(directory)
    de, en = _multi30k_lines("de", 3000), _multi30k_lines("en", 3000)
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-3)
    for step in range(200):
        first = step * 32 % 2900
        batch = tokenizer(de[first : first + 32], text_target=en[first : first + 32], return_tensors="pt", padding=True)
        batch["labels"][batch["labels"] == size - 1] = -100
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    with torch.no_grad():
        model.final_logits_bias.copy_(0.1 * torch.randn(1, size))  # random and non-zero
    model.generation_config.bad_words_ids = [[size - 1]]  # OPUS-MT's: never output pad
    model.generation_config.num_beams = 4
    model.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def hf(marian_dir: Path):
    model = transformers.MarianMTModel.from_pretrained(marian_dir).eval()
    tokenizer = transformers.MarianTokenizer.from_pretrained(marian_dir)
    return model, tokenizer


@pytest.fixture(scope="module")
def imported(marian_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("imported") / "opus.ckpt"
    assert convert(marian_dir, path) == "import"
    return path


def _mt_ids(loaded, hf_vocab: dict[str, int]) -> dict[int, int]:
    """mt id -> Hugging Face id, through the pieces (PAD has none: its row is mt's own)."""
    pieces = loaded.tokenizer.tgt_pieces()
    mapping = {i: hf_vocab[p] for i, p in enumerate(pieces) if p in hf_vocab and p not in ("<pad>", "<s>")}
    mapping[2] = hf_vocab["<pad>"]  # BOS: the row of Marian's decoder start
    return mapping


def _hf_inputs(tokenizer, sentences):
    batch = tokenizer(sentences, return_tensors="pt", padding=True)
    return batch["input_ids"], batch["attention_mask"]


def _mt_inputs(loaded, sentences, prefix=()):
    """mt's padded sources of ``sentences`` (``prefix``: ids before each, a language token) and their pad mask."""
    src = pad_sequences([[*prefix, *ids] for ids in loaded.tokenizer.encode_src(sentences)], suffix=EOS_ID)
    return src, src == PAD_ID


def test_imported_tokenizer_and_logits_equal_hugging_face(hf, imported: Path) -> None:
    model, tokenizer = hf
    loaded = load_checkpoint(imported)
    to_hf = _mt_ids(loaded, tokenizer.get_vocab())
    src, pad_mask = _mt_inputs(loaded, SENTENCES)
    input_ids, attention_mask = _hf_inputs(tokenizer, SENTENCES)
    assert (input_ids == tokenizer.unk_token_id).sum() >= 2  # the pieces left out of vocab.json
    mapped = src.clone().apply_(lambda i: to_hf.get(i, tokenizer.pad_token_id))
    assert torch.equal(mapped, input_ids) and torch.equal(~pad_mask, attention_mask.bool())

    targets = tokenizer(text_target=["A man in a hat.", "Two dogs play in the snow outside."], padding=True)
    labels = torch.tensor(targets["input_ids"])
    start = torch.full((2, 1), model.config.decoder_start_token_id)
    decoder_input = torch.cat([start, labels[:, :-1]], dim=1)
    to_mt = {h: m for m, h in to_hf.items()}
    tgt_in = decoder_input.clone().apply_(lambda i: to_mt[i])
    with torch.no_grad():
        expected = model(input_ids[:2], attention_mask=attention_mask[:2], decoder_input_ids=decoder_input).logits
        got = loaded.model(src[:2], pad_mask[:2], tgt_in)
    columns = torch.tensor([to_hf[i] for i in range(got.size(-1)) if i in to_hf])
    ours = torch.tensor([i for i in range(got.size(-1)) if i in to_hf])
    real = decoder_input != tokenizer.pad_token_id
    real[:, 0] = True  # the start token
    assert real.sum() > 10
    torch.testing.assert_close(got[..., ours][real], expected[..., columns][real], rtol=0, atol=1e-5)
    assert torch.log_softmax(got, -1)[..., PAD_ID].max() < -1000  # PAD: probability 0, as Marian's has none apart
    torch.testing.assert_close(
        torch.log_softmax(got, -1)[..., ours][real],
        torch.log_softmax(expected, -1)[..., columns][real],
        rtol=0,
        atol=1e-5,
    )


def _generated(model, tokenizer, sentences, **settings) -> list[list[int]]:
    input_ids, attention_mask = _hf_inputs(tokenizer, sentences)
    with torch.no_grad():
        out = model.generate(
            input_ids,
            attention_mask=attention_mask,
            max_new_tokens=MAX_NEW,
            do_sample=False,
            repetition_penalty=1.0,
            no_repeat_ngram_size=0,
            **settings,
        )
    sequences = []
    for row in out[:, 1:].tolist():  # without the start token
        sequences.append(row[: row.index(tokenizer.eos_token_id) + 1] if tokenizer.eos_token_id in row else row)
    return sequences


@pytest.mark.parametrize("beam", [1, 4])
def test_greedy_and_beam_outputs_equal_generate(hf, imported: Path, beam: int) -> None:
    """generate(): num_beams=beam, length_penalty=1.0 (score / generated tokens incl. EOS), early_stopping=True
    (done with num_beams finished), max_new_tokens=30, no repetition penalties, pad forbidden (the saved
    generation config); mt: the same beam, length penalty ``average`` with alpha 1, max_len 30."""
    model, tokenizer = hf
    loaded = load_checkpoint(imported)
    to_hf = _mt_ids(loaded, tokenizer.get_vocab())
    settings = dict(num_beams=beam, length_penalty=1.0, early_stopping=True) if beam > 1 else dict(num_beams=1)
    expected = _generated(model, tokenizer, SENTENCES, **settings)
    src, pad_mask = _mt_inputs(loaded, SENTENCES)
    limits = dict(max_len_a=0.0, max_len_b=MAX_NEW, max_len=MAX_NEW)
    if beam == 1:
        hyps = greedy_search(loaded.model, src, pad_mask, **limits)
    else:
        hyps = [
            best[0]
            for best in beam_search(
                loaded.model,
                src,
                pad_mask,
                beam=beam,
                length_penalty_alpha=1.0,
                length_penalty_type="average",
                **limits,
            )
        ]
    got = [[to_hf[i] for i in [*h.tokens, EOS_ID]] for h in hyps]  # mt leaves EOS out of its outputs
    ends = [(len(seq), seq[-1] == tokenizer.eos_token_id) for seq in expected]
    assert all(ended and length < MAX_NEW for length, ended in ends), ends  # none cut at the limit
    assert len({len(seq) for seq in expected}) > 2  # outputs of several lengths, not all at once
    assert got == expected


def test_an_imported_models_bleu_is_tokenized_for_its_target_language(imported: Path, tmp_path: Path) -> None:
    """An OPUS-MT model's checkpoint has no data config: its BLEU took 13a whatever it translates into (an en-zh
    model's scores on unsegmented Chinese). Its tokenizer_config's target_lang now picks sacreBLEU's tokenizer."""
    from mt.decode.scoring import score_checkpoint

    stored = read_checkpoint(imported)
    assert stored["imported_from"]["target_lang"] == "en"
    stored["imported_from"]["target_lang"] = "zh"  # as opus-mt-en-zh's tokenizer_config says
    torch.save(stored, tmp_path / "zh.ckpt")
    (tmp_path / "src.txt").write_text("Ein Hund läuft.\n")
    (tmp_path / "ref.txt").write_text("一只狗在跑。\n")
    common = {"source": str(tmp_path / "src.txt"), "references": [str(tmp_path / "ref.txt")], "progress": False}
    assert "tok:zh" in score_checkpoint(tmp_path / "zh.ckpt", **common)["bleu_signature"]
    assert "tok:13a" in score_checkpoint(imported, **common)["bleu_signature"]  # English: sacreBLEU's default


def test_imported_search_defaults_come_from_the_generation_config(imported: Path) -> None:
    search = load_checkpoint(imported).search
    assert (search["beam"], search["length_penalty_type"]) == (4, "average")


def test_export_of_an_import_loads_in_transformers_with_the_same_logits(hf, imported: Path, tmp_path: Path) -> None:
    model, tokenizer = hf
    exported = tmp_path / "hf"
    assert convert(imported, exported) == "export"
    again = transformers.MarianMTModel.from_pretrained(exported).eval()
    again_tokenizer = transformers.MarianTokenizer.from_pretrained(exported)
    input_ids, attention_mask = _hf_inputs(tokenizer, SENTENCES)
    again_ids, again_mask = _hf_inputs(again_tokenizer, SENTENCES)
    pieces_then = [tokenizer.convert_ids_to_tokens(row) for row in input_ids.tolist()]
    assert [again_tokenizer.convert_ids_to_tokens(row) for row in again_ids.tolist()] == pieces_then
    with torch.no_grad():
        expected = model(
            input_ids,
            attention_mask=attention_mask,
            decoder_input_ids=input_ids[:, :1] * 0 + model.config.decoder_start_token_id,
        ).logits
        got = again(
            again_ids,
            attention_mask=again_mask,
            decoder_input_ids=again_ids[:, :1] * 0 + again.config.decoder_start_token_id,
        ).logits
    vocab, again_vocab = tokenizer.get_vocab(), again_tokenizer.get_vocab()
    shared = [p for p in vocab if p in again_vocab and p != "<pad>"]
    torch.testing.assert_close(
        got[..., [again_vocab[p] for p in shared]], expected[..., [vocab[p] for p in shared]], rtol=0, atol=1e-5
    )
    # Every Marian weight comes back, row for row by piece (pad's row is the decoder start's, mt's BOS).
    before = transformers.MarianMTModel.from_pretrained(tokenizer.name_or_path).state_dict()
    after = again.state_dict()
    rows_before = [vocab[p] for p in shared] + [vocab["<pad>"]]
    rows_after = [again_vocab[p] for p in shared] + [again_vocab["<s>"]]
    for name, tensor in before.items():
        if "embed_positions" in name:
            continue
        if tensor.shape[0] == len(vocab) or name == "final_logits_bias":
            pick = (lambda t, rows: t[:, rows]) if name == "final_logits_bias" else (lambda t, rows: t[rows])
            assert torch.equal(pick(after[name], rows_after), pick(tensor, rows_before)), name
        else:
            assert torch.equal(after[name], tensor), name


def test_a_round_trip_through_hugging_face_leaves_every_weight_equal(imported: Path, tmp_path: Path) -> None:
    convert(imported, tmp_path / "hf")
    convert(tmp_path / "hf", tmp_path / "back.ckpt")
    first, back = read_checkpoint(imported), read_checkpoint(tmp_path / "back.ckpt")
    assert first["state_dict"].keys() == back["state_dict"].keys()
    for name, tensor in first["state_dict"].items():
        assert torch.equal(back["state_dict"][name], tensor), name
    assert back["tokenizer"] == first["tokenizer"]
    assert back["hyper_parameters"]["model"] == first["hyper_parameters"]["model"]


def _native_checkpoint(path: Path, *, pre_norm: bool, multilingual: bool = False, search: dict | None = None) -> Path:
    """A randomly initialised mt model (interleaved positions, no output bias) saved as training saves it;
    ``multilingual``: de↔en with target-language tokens, as ``data.lang_tokens=true`` trains it; ``search``: the
    saved search (none: a file without one)."""
    from mt.config import ModelConfig, to_dict
    from mt.data.tokenizer import train_tokenizer
    from mt.model.transformer import Transformer

    lines = _multi30k_lines("de", 500), _multi30k_lines("en", 500)
    symbols = ("<2de>", "<2en>") if multilingual else ()
    tokenizer = train_tokenizer(*lines, vocab_size=200, symbols=symbols)
    data = {"src_lang": "de", "tgt_lang": "en"}
    if multilingual:
        data["corpora"], data["lang_tokens"] = [data, {"src_lang": "en", "tgt_lang": "de"}], True
    cfg = ModelConfig(d_model=32, n_heads=4, encoder_layers=2, decoder_layers=1, d_ff=64, pre_norm=pre_norm)
    torch.manual_seed(1)
    model = Transformer(cfg, src_vocab_size=tokenizer.src_vocab_size, tgt_vocab_size=tokenizer.tgt_vocab_size)
    torch.save(
        {
            "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
            "hyper_parameters": {
                "model": to_dict(cfg),
                "src_vocab_size": tokenizer.src_vocab_size,
                "tgt_vocab_size": tokenizer.tgt_vocab_size,
                "data": data,
                **({"search": search} if search is not None else {}),
            },
            "tokenizer": tokenizer.to_state(),
        },
        path,
    )
    return path


def test_a_trained_mt_model_exports_to_hugging_face_with_the_same_logits(tmp_path: Path) -> None:
    """mt's interleaved positions become Marian's halves by permuting the model width everywhere."""
    checkpoint = _native_checkpoint(tmp_path / "native.ckpt", pre_norm=False)
    loaded = load_checkpoint(checkpoint)
    convert(checkpoint, tmp_path / "hf")
    # Every file readable by others as the umask allows (a serving container of another user loads it):
    # safetensors' save_file made the weights 0600.
    umask = os.umask(0)
    os.umask(umask)
    assert {p.name: p.stat().st_mode & 0o777 for p in (tmp_path / "hf").iterdir()} == {
        p.name: 0o666 & ~umask for p in (tmp_path / "hf").iterdir()
    }
    model = transformers.MarianMTModel.from_pretrained(tmp_path / "hf").eval()
    tokenizer = transformers.MarianTokenizer.from_pretrained(tmp_path / "hf")
    src, pad_mask = _mt_inputs(loaded, SENTENCES)
    input_ids, attention_mask = _hf_inputs(tokenizer, SENTENCES)
    assert torch.equal(src.masked_fill(pad_mask, PAD_ID), input_ids)  # mt's own ids: vocab.json is mt's order
    tgt_in = torch.tensor([[2, 40, 41, 42, 7]] * len(SENTENCES))
    with torch.no_grad():
        expected = loaded.model(src, pad_mask, tgt_in)
        got = model(input_ids, attention_mask=attention_mask, decoder_input_ids=tgt_in).logits
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    assert model.generation_config.bad_words_ids == [[PAD_ID], [2]]
    # The permutation is what makes it equal: without it the exported network computes something else.
    state = loaded.model.state_dict()
    assert not torch.equal(
        positions_in_halves(state, 32)["encoder_layers.0.ffn.up.weight"], state["encoder_layers.0.ffn.up.weight"]
    )


@pytest.fixture(scope="module")
def multilingual(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A de↔en mt model with target-language tokens, and its Hugging Face export."""
    directory = tmp_path_factory.mktemp("multilingual")
    checkpoint = _native_checkpoint(directory / "multi.ckpt", pre_norm=False, multilingual=True)
    assert convert(checkpoint, directory / "hf") == "export"
    return checkpoint, directory / "hf"


def test_a_multilingual_model_exports_its_language_tokens_as_opus_mt_codes(multilingual) -> None:
    """``MarianTokenizer`` reads ``>>de<<`` at the start of a source as one token: the ids it gives are mt's own
    source with ``<2de>`` first, and the exported model's logits are mt's for each target language."""
    checkpoint, exported = multilingual
    loaded = load_checkpoint(checkpoint)
    model = transformers.MarianMTModel.from_pretrained(exported).eval()
    tokenizer = transformers.MarianTokenizer.from_pretrained(exported)
    assert sorted(tokenizer.supported_language_codes) == [">>de<<", ">>en<<"]
    tgt_in = torch.tensor([[2, 40, 41, 42, 7]] * len(SENTENCES))
    logits = {}
    for lang in ("de", "en"):
        prefix = loaded.source_prefix(lang)
        assert prefix == [loaded.tokenizer.src.piece_to_id(f"<2{lang}>")]
        src, pad_mask = _mt_inputs(loaded, SENTENCES, prefix)
        input_ids, attention_mask = _hf_inputs(tokenizer, [f">>{lang}<< {s}" for s in SENTENCES])
        assert torch.equal(src, input_ids)  # mt's PAD is 0 and Hugging Face pads with pad_token_id 0
        with torch.no_grad():
            expected = loaded.model(src, pad_mask, tgt_in)
            logits[lang] = model(input_ids, attention_mask=attention_mask, decoder_input_ids=tgt_in).logits
        torch.testing.assert_close(logits[lang], expected, rtol=0, atol=1e-5)
    assert not torch.allclose(logits["de"], logits["en"], atol=1e-3)  # the code is read, not dropped


def test_language_codes_come_back_as_language_tokens_on_import(multilingual, tmp_path: Path) -> None:
    """Import → ``tgt_lang=`` (and a fine-tuning run's ``<2de>``) finds the ``>>de<<`` code, and the imported
    model's logits with it are the original's with ``<2de>``; a source may carry the code itself, as in
    transformers; a model fine-tuned from the import without ``data.lang_tokens`` gets no code put first."""
    checkpoint, exported = multilingual
    assert convert(exported, tmp_path / "back.ckpt") == "import"
    original, back = load_checkpoint(checkpoint), load_checkpoint(tmp_path / "back.ckpt")
    codes = {lang: json.loads((exported / "vocab.json").read_text())[f">>{lang}<<"] for lang in ("de", "en")}
    assert back.tokenizer.language_tokens() == codes
    assert back.tokenizer.symbol_id("<2de>") == codes["de"]  # what data.lang_tokens=true asks a tokenizer
    assert back.source_prefix(None) == []
    assert back.tokenizer.encode_src([">>en<< " + SENTENCES[1]]) == [
        [codes["en"], *back.tokenizer.encode_src(SENTENCES[1:2])[0]]
    ]
    tgt_in = torch.tensor([[2, 40, 41, 42, 7]] * len(SENTENCES))
    logits = {}
    for lang in codes:
        assert back.source_prefix(lang) == [codes[lang]]
        for name, loaded in (("original", original), ("back", back)):
            src, pad_mask = _mt_inputs(loaded, SENTENCES, loaded.source_prefix(lang))
            with torch.no_grad():
                logits[name, lang] = loaded.model(src, pad_mask, tgt_in)[..., PAD_ID + 1 :]  # import's PAD row
        torch.testing.assert_close(logits["back", lang], logits["original", lang], rtol=0, atol=1e-5)
    assert not torch.allclose(logits["back", "de"], logits["back", "en"], atol=1e-3)
    with pytest.raises(ValueError, match=r"tgt_lang=fr: .*back.ckpt has the language codes de, en only"):
        back.source_prefix("fr")
    with pytest.raises(ValueError, match=r"has no language code >>fr<< for <2fr> \(its codes: de, en\)"):
        back.tokenizer.symbol_id("<2fr>")
    with pytest.raises(ValueError, match=r"an imported vocabulary has no tag <BT>"):
        back.tokenizer.symbol_id("<BT>")
    # Fine-tuned from the import: with the codes (data.lang_tokens) or without them.
    one_way = {"src_lang": "de", "tgt_lang": "en"}
    assert dataclasses.replace(back, data={**one_way, "lang_tokens": False}).source_prefix("en") == []
    assert dataclasses.replace(back, data={**one_way, "lang_tokens": True}).source_prefix(None) == [codes["en"]]


def test_a_source_with_its_own_code_and_tgt_lang_gets_the_code_once(multilingual, tmp_path, monkeypatch) -> None:
    """``tgt_lang=en`` and a source ``>>en<< text`` give the model the code once (as ``MarianTokenizer`` reads the
    text alone), in decoding and in a fine-tuning run's encoded corpus; another code than ``tgt_lang``'s, or a
    code the model lacks, is refused naming the line, while text in ASCII quotes (``>>Hallo<<``) is text."""
    from mt.config import DataConfig, SearchConfig, from_dict
    from mt.data.preprocess import prepare_split_arrow
    from mt.decode import translator
    from mt.errors import DataError
    from tests.conftest import write_text_corpus

    _, exported = multilingual
    assert convert(exported, tmp_path / "back.ckpt") == "import"
    back = load_checkpoint(tmp_path / "back.ckpt")
    en = json.loads((exported / "vocab.json").read_text())[">>en<<"]
    fed = []
    monkeypatch.setattr(translator, "decode_ids", lambda model, src, *args, **kw: fed.extend(src) or [])

    def run(sources, tgt_lang=None):
        fed.clear()
        prefix = back.source_prefix(tgt_lang)
        search = SearchConfig(beam=1)
        translator.translate(back.model, back.tokenizer, sources, search, src_prefix=prefix, origin="in.de")
        return fed

    plain = back.tokenizer.encode_src(SENTENCES[:2])
    expected = [[en, *ids] for ids in plain]
    assert run([f">>en<< {SENTENCES[0]}", SENTENCES[1]], "en") == expected
    assert run([f">>en<< {SENTENCES[0]}"]) == expected[:1]  # without tgt_lang the source's own code, as before
    assert run([">>en<<", SENTENCES[1]], "en") == expected[1:]  # a code alone is an empty line: nothing to decode
    assert run([">>en<<"]) == []
    quoted = f">>Hallo<< {SENTENCES[0]}"
    assert run([quoted], "en") == [[en, *back.tokenizer.encode_src([quoted])[0]]]
    for code, tgt_lang in ((">>de<<", "en"), (">>fr<<", "en"), (">>fr<<", None)):
        with pytest.raises(DataError, match=rf"^in.de: line 2: starts with {code}"):
            run(["", f"{code} {SENTENCES[0]}"], tgt_lang)

    # Fine-tuning with data.lang_tokens: the encoded sources, against the code's id and the plain text's ids.
    pairs = [(f">>en<< {SENTENCES[0]}", "A man."), (SENTENCES[1], "Two dogs.")]
    corpus = write_text_corpus(tmp_path / "corpus", {"valid": pairs})  # valid: no cleaning
    cfg = from_dict(DataConfig, {"name": "t", "path": str(corpus), "splits": {"valid": "valid"}})
    encoded = prepare_split_arrow(cfg, "valid", back.tokenizer, cache_dir=tmp_path / "cache", src_prefix=[en])
    offsets = encoded.src_offsets
    assert [encoded.src_tokens[offsets[i] : offsets[i + 1]].tolist() for i in range(2)] == expected
    corpus = write_text_corpus(tmp_path / "wrong", {"valid": [pairs[1], (f">>de<< {SENTENCES[0]}", "A man.")]})
    cfg = from_dict(DataConfig, {"name": "t", "path": str(corpus), "splits": {"valid": "valid"}})
    with pytest.raises(DataError, match=r"wrong.*: pair 2: starts with >>de<<, but >>en<< is put first"):
        prepare_split_arrow(cfg, "valid", back.tokenizer, cache_dir=tmp_path / "cache", src_prefix=[en])


def test_a_multilingual_ctranslate2_export_lists_its_language_tokens(multilingual, tmp_path: Path) -> None:
    """With the token of ``mt_export.json`` first, CTranslate2 scores a target as ``mt`` does with ``tgt_lang``
    (log-probabilities of each target token; the model's weights are random, so greedy output says little)."""
    ctranslate2 = pytest.importorskip("ctranslate2")
    from mt.export import export_ctranslate2

    checkpoint, _ = multilingual
    loaded = load_checkpoint(checkpoint)
    export_ctranslate2(checkpoint, tmp_path / "ct2")
    tokens = json.loads((tmp_path / "ct2/mt_export.json").read_text())["language_tokens"]
    assert tokens == {"de": "<2de>", "en": "<2en>"}
    translator = ctranslate2.Translator(str(tmp_path / "ct2"))
    pieces, tokenizer = loaded.tokenizer.src_pieces(), loaded.tokenizer
    targets = tokenizer.encode_tgt(["Two dogs play in the snow.", "A man in a hat."])
    scored = {}
    for lang, token in tokens.items():
        sources = [[token, *(pieces[i] for i in ids)] for ids in tokenizer.encode_src(SENTENCES[1:3])]
        results = translator.score_batch(sources, [[pieces[i] for i in ids] for ids in targets])
        scored[lang] = [torch.tensor(r.log_probs) for r in results]
        src, pad_mask = _mt_inputs(loaded, SENTENCES[1:3], loaded.source_prefix(lang))
        for row, (ids, got) in enumerate(zip(targets, scored[lang])):
            tgt_in = torch.tensor([[2, *ids]])
            with torch.no_grad():
                logits = loaded.model(src[row : row + 1], pad_mask[row : row + 1], tgt_in)
            expected = logits.log_softmax(-1)[0].gather(-1, torch.tensor([*ids, EOS_ID])[:, None])[:, 0]
            torch.testing.assert_close(got, expected, rtol=0, atol=1e-4)
    assert not torch.allclose(scored["de"][0], scored["en"][0], atol=1e-3)  # the token is read


def test_a_pre_norm_model_is_refused_in_one_line(tmp_path: Path) -> None:
    checkpoint = _native_checkpoint(tmp_path / "pre.ckpt", pre_norm=True)
    result = subprocess.run(
        [sys.executable, "-m", "mt.convert", f"input={checkpoint}", f"output={tmp_path / 'hf'}"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: checkpoint {checkpoint}: model.pre_norm=true: Marian models are post-norm"
    ]
    assert not (tmp_path / "hf").exists()


def test_a_config_mt_cannot_represent_is_refused_naming_the_field(marian_dir: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    for path in marian_dir.iterdir():
        (other / path.name).write_bytes(path.read_bytes())
    config = json.loads((other / "config.json").read_text())
    config["decoder_ffn_dim"] = 128
    (other / "config.json").write_text(json.dumps(config))
    with pytest.raises(
        ValueError, match=r"config.json: encoder_ffn_dim=64 and decoder_ffn_dim=128: mt needs them equal"
    ):
        convert(other, tmp_path / "out.ckpt")
    assert not (tmp_path / "out.ckpt").exists()


def test_ctranslate2_export_of_an_imported_model_gives_mt_greedy_output(imported: Path, tmp_path: Path) -> None:
    ctranslate2 = pytest.importorskip("ctranslate2")
    from mt.export import export_ctranslate2

    loaded = load_checkpoint(imported)
    export_ctranslate2(imported, tmp_path / "ct2")
    translator = ctranslate2.Translator(str(tmp_path / "ct2"))
    pieces = loaded.tokenizer.src_pieces()
    sources = [[pieces[i] for i in ids] for ids in loaded.tokenizer.encode_src(SENTENCES)]
    results = translator.translate_batch(sources, beam_size=1, max_decoding_length=MAX_NEW, min_decoding_length=0)
    src, pad_mask = _mt_inputs(loaded, SENTENCES)
    hyps = greedy_search(loaded.model, src, pad_mask, max_len_a=0.0, max_len_b=MAX_NEW, max_len=MAX_NEW)
    expected = [[pieces[i] for i in h.tokens if i != EOS_ID] for h in hyps]
    assert [r.hypotheses[0] for r in results] == expected
    assert sum(len(e) for e in expected) > 10


def test_fine_tuning_an_imported_model_takes_its_architecture(imported: Path, toy_corpus_dir: Path, tmp_path) -> None:
    """init_from= an imported model needs no model settings: the checkpoint's architecture is taken, but for
    fields set on the command line, which must match it."""
    base = tmp_path / "base.ckpt"
    base.write_bytes(imported.read_bytes())
    # (neither a model nor a tokenizer of its own: both are the checkpoint's)
    args = [
        a
        for a in toy_args(toy_corpus_dir, tmp_path / "run", "trainer.max_steps=2")
        if a != "model=tiny" and not a.startswith("tokenizer.")
    ]
    args += [f"init_from={base}", "validation.decode=none", "data.max_len=200"]
    result = subprocess.run([sys.executable, "-m", "mt.train", *args], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-2000:]
    model = read_checkpoint(tmp_path / "run/checkpoints/last.ckpt")["hyper_parameters"]["model"]
    wanted = read_checkpoint(imported)["hyper_parameters"]["model"]
    # Resumed once the init_from file is gone: the architecture is the run's own last.ckpt's. Here as SLURM
    # requeues a job (no resume=auto given: the requeued job goes on from its last.ckpt); resume=auto alike.
    base.unlink()
    more = [*args, "trainer.max_steps=3"]
    env = {**os.environ, "SLURM_RESTART_COUNT": "1"}
    resumed = subprocess.run(
        [sys.executable, "-m", "mt.train", *more], capture_output=True, text=True, cwd=ROOT, env=env
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert read_checkpoint(tmp_path / "run/checkpoints/last.ckpt")["global_step"] == 3
    base.write_bytes(imported.read_bytes())  # for the refusal below
    assert model == wanted and (model["activation"], model["positions"], model["output_bias"]) == (
        "silu",
        "halves",
        True,
    )

    refused = subprocess.run(
        [sys.executable, "-m", "mt.train", *args, f"hydra.run.dir={tmp_path / 'wider'}", "model.d_model=64"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert refused.returncode == 2
    assert (
        refused.stderr.strip()
        .splitlines()[-1]
        .startswith(f"error: init_from={base}: the checkpoint is of another model (model.d_model=32 there, 64 here)")
    )


def _run_directory(root: Path, *, search: dict | None = None) -> Path:
    """A training run's layout (checkpoints, config, tokenizer, logs) with a real checkpoint; returns it."""
    (root / "checkpoints").mkdir(parents=True)
    checkpoint = _native_checkpoint(root / "checkpoints/best.ckpt", pre_norm=False, search=search)
    (root / "config.yaml").write_text("model:\n  d_model: 32\n")
    (root / "tokenizer").mkdir()
    (root / "tokenizer/spm.model").write_bytes(b"spm")
    (root / "csv").mkdir()
    (root / "csv/metrics.csv").write_text("step,loss\n1,9.0\n")
    return checkpoint


def _convert_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mt.convert", *args], capture_output=True, text=True, cwd=ROOT, timeout=300
    )


def test_convert_overwrite_never_replaces_a_run_directory_or_the_checkpoints(tmp_path: Path) -> None:
    """overwrite=true replaces an empty directory or an earlier export only; a run directory, its checkpoints
    folder (which hold the input) or a directory of anything else are refused in one line and left as they were."""
    from mt.errors import RunError

    run = tmp_path / "run"
    checkpoint = _run_directory(run)
    before = tree_bytes(run)
    result = _convert_cli(f"input={checkpoint}", f"output={run}", "overwrite=true")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: output={run}: holds the input {checkpoint}; choose another output"
    ]
    with pytest.raises(RunError, match=rf"^output={run}/checkpoints: holds the input {checkpoint}; choose another"):
        convert(checkpoint, run / "checkpoints")
    other = tmp_path / "other"  # another run's directory: it does not hold the input
    _run_directory(other)
    with pytest.raises(
        RunError,
        match=rf"^output={other}: not a previous Hugging Face export \(it holds checkpoints/, config.yaml, csv/, "
        r"tokenizer/\); choose another output$",
    ):
        convert(checkpoint, other)
    assert tree_bytes(run) == before and tree_bytes(other) == tree_bytes(run)

    # An earlier export is replaced whole (its stale pytorch_model.bin goes); one with a file of another's is not.
    exported = tmp_path / "hf"
    convert(checkpoint, exported)
    (exported / "pytorch_model.bin").write_bytes(b"stale")
    beam3 = _native_checkpoint(tmp_path / "beam3.ckpt", pre_norm=False, search={"beam": 3})
    result = _convert_cli(f"input={beam3}", f"output={exported}", "overwrite=true")
    assert result.returncode == 0, result.stderr
    assert json.loads((exported / "generation_config.json").read_text())["num_beams"] == 3
    assert not (exported / "pytorch_model.bin").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["beam3.ckpt", "hf", "other", "run"]  # no temporaries
    (exported / "notes.txt").write_text("mine")
    kept = tree_bytes(exported)
    with pytest.raises(RunError, match=r"not a previous Hugging Face export \(it holds notes.txt\)"):
        convert(checkpoint, exported)
    assert tree_bytes(exported) == kept
    (tmp_path / "empty").mkdir()
    assert convert(checkpoint, tmp_path / "empty") == "export"
    assert (tmp_path / "empty/config.json").is_file()
    # A link to an earlier export (replacing the link would leave the export stale), a dangling one, no name.
    (tmp_path / "link").symlink_to(exported)
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    for link in ("link", "dangling"):
        with pytest.raises(RunError, match=rf"^output={tmp_path / link}: a symbolic link; give the directory"):
            convert(checkpoint, tmp_path / link)
    assert tree_bytes(exported) == kept and (tmp_path / "link").is_symlink()
    with pytest.raises(RunError, match=r"^output=\.: expected the name of a directory"):
        convert(checkpoint, Path("."))
    # What a killed export left beside its output goes with the next one.
    (tmp_path / ".empty.tmp").mkdir()
    (tmp_path / ".empty.tmp/partial.bin").write_bytes(b"half")
    assert convert(checkpoint, tmp_path / "empty") == "export" and not (tmp_path / ".empty.tmp").exists()


def test_import_overwrite_replaces_only_an_earlier_import(marian_dir: Path, tmp_path: Path) -> None:
    """The output of an import is a checkpoint: overwrite=true may replace an earlier import's, never a file of
    the input directory, a training checkpoint or a file that is no checkpoint."""
    from mt.errors import RunError

    source = tmp_path / "opus"
    source.mkdir()
    for path in marian_dir.iterdir():
        (source / path.name).write_bytes(path.read_bytes())
    originals = tree_bytes(source)
    weights = source / "model.safetensors"
    result = _convert_cli(f"input={source}", f"output={weights}", "overwrite=true")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: output={weights}: a file of the input {source}; choose another output"
    ]
    trained = _native_checkpoint(tmp_path / "best.ckpt", pre_norm=False)
    notes = tmp_path / "notes.txt"
    notes.write_text("not a checkpoint\n")
    kept = trained.read_bytes()
    with pytest.raises(RunError, match=rf"^output={trained}: a checkpoint that no earlier import wrote"):
        convert(source, trained)
    with pytest.raises(RunError, match=rf"^output={notes}: not a checkpoint; choose another output$"):
        convert(source, notes)
    assert (
        tree_bytes(source) == originals and trained.read_bytes() == kept and notes.read_text() == "not a checkpoint\n"
    )

    earlier = tmp_path / "opus.ckpt"  # the training checkpoint made an import's: only then may it be replaced
    torch.save({**read_checkpoint(trained), "imported_from": {"directory": "elsewhere"}}, earlier)
    assert convert(source, earlier) == "import"
    assert read_checkpoint(earlier)["imported_from"]["directory"] == str(source)


_PLAIN = {"max_len_a": 0.0, "max_len_b": 200}  # a length limit generate() can hold


@pytest.mark.parametrize(
    ("search", "length_penalty", "warned"),
    [
        (
            {"beam": 4, "length_penalty": 0.8, "length_penalty_type": "gnmt", **_PLAIN},
            0.8,
            "length_penalty_type=gnmt (score / ((5 + length) / 6) ** 0.8): generate() divides by length ** 0.8 "
            "instead (length_penalty_type=average)",
        ),
        ({"beam": 4, "length_penalty": 0.8, "length_penalty_type": "average", **_PLAIN}, 0.8, None),
        ({"beam": 4, "length_penalty": 0.8, "length_penalty_type": "none", **_PLAIN}, 0.0, None),  # length ** 0
        ({"beam": 4, "length_penalty": 0.0, "length_penalty_type": "gnmt", **_PLAIN}, 0.0, None),
        (
            {"beam": 2, "sampling": True, "length_penalty_type": "average", **_PLAIN},
            1.0,
            "sampling=true: generate() searches with num_beams=2 instead",
        ),
    ],
)
def test_a_search_generate_cannot_do_is_exported_with_a_warning(tmp_path, caplog, search, length_penalty, warned):
    checkpoint = _native_checkpoint(tmp_path / "model.ckpt", pre_norm=False, search=search)
    with caplog.at_level("WARNING", logger="mt.model.marian"):
        assert convert(checkpoint, tmp_path / "hf") == "export"
    generation = json.loads((tmp_path / "hf/generation_config.json").read_text())
    assert (generation["num_beams"], generation["length_penalty"]) == (search["beam"], length_penalty)
    expected = (
        [] if warned is None else [f"checkpoint {checkpoint}: generation_config.json cannot hold its search's {warned}"]
    )
    assert [record.getMessage() for record in caplog.records] == expected


def test_convert_warns_in_one_line_of_what_the_default_search_loses(tmp_path: Path) -> None:
    """A checkpoint without a saved search decodes with the defaults: GNMT's length penalty and at most
    1.2 x source + 10 tokens, which generate() has no counterpart for; the export goes on."""
    checkpoint = _native_checkpoint(tmp_path / "model.ckpt", pre_norm=False)
    result = _convert_cli(f"input={checkpoint}", f"output={tmp_path / 'hf'}")
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip().splitlines() == [
        f"checkpoint {checkpoint}: generation_config.json cannot hold its search's length_penalty_type=gnmt "
        "(score / ((5 + length) / 6) ** 1): generate() divides by length ** 1 instead (length_penalty_type=average); "
        "max_len_a=1.2, max_len_b=10 (at most 1.2 x source tokens + 10 output tokens): generate() stops at 512 "
        "tokens only"
    ]
    assert (tmp_path / "hf/model.safetensors").is_file()


@pytest.mark.parametrize(
    "search",
    [
        {"beam": 4, "length_penalty": 0.6, "length_penalty_type": "average", "min_len": 6, "max_len_b": 30},
        {"beam": 1, "length_penalty_type": "average", "max_len_b": 9},
    ],
)
def test_generate_with_the_exported_generation_config_decodes_as_the_saved_search(
    imported: Path, tmp_path: Path, search: dict
) -> None:
    """generate() given nothing but the inputs (the exported generation_config.json) gives mt's output under the
    checkpoint's saved search: its beam and length penalty, no EOS before ``min_len`` tokens, at most ``max_len_b``
    tokens (EOS included). The export keeps mt's ids, so the two compare without a mapping."""
    search = {**search, "max_len_a": 0.0}
    stored = read_checkpoint(imported)
    tuned = tmp_path / "tuned.ckpt"
    torch.save({**stored, "hyper_parameters": {**stored["hyper_parameters"], "search": search}}, tuned)
    convert(tuned, tmp_path / "hf")
    model = transformers.MarianMTModel.from_pretrained(tmp_path / "hf").eval()
    tokenizer = transformers.MarianTokenizer.from_pretrained(tmp_path / "hf")
    input_ids, attention_mask = _hf_inputs(tokenizer, SENTENCES)
    with torch.no_grad():
        out = model.generate(input_ids, attention_mask=attention_mask)
    expected = [row[: row.index(EOS_ID) + 1] for row in out[:, 1:].tolist()]

    loaded = load_checkpoint(tuned)
    src, pad_mask = _mt_inputs(loaded, SENTENCES)
    settings = dict(max_len_a=0.0, max_len_b=search["max_len_b"], length_penalty_type="average")

    def decode(min_len: int, max_len_b: int) -> list[list[int]]:
        limits = {**settings, "min_len": min_len, "max_len_b": max_len_b}
        if search["beam"] == 1:
            hyps = greedy_search(loaded.model, src, pad_mask, length_penalty_alpha=1.0, **limits)
        else:
            alpha = search["length_penalty"]
            found = beam_search(loaded.model, src, pad_mask, beam=4, length_penalty_alpha=alpha, **limits)
            hyps = [best[0] for best in found]
        return [[*h.tokens, EOS_ID] for h in hyps]

    got = decode(search.get("min_len", 0), search["max_len_b"])
    assert got == expected
    # The limits are what made them equal: without them mt's outputs differ.
    free = decode(0, MAX_NEW)
    if "min_len" in search:
        assert all(len(seq) > search["min_len"] for seq in got) and min(len(seq) for seq in free) <= search["min_len"]
        assert all(len(seq) < search["max_len_b"] for seq in got)  # none cut at the limit (scored alike)
    else:
        assert max(len(seq) for seq in got) == search["max_len_b"] < max(len(seq) for seq in free)
