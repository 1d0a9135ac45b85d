"""Property tests: the readers and the translate path never crash and always keep the line count."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from mt.config import ModelConfig, SearchConfig
from mt.data.readers import read_lines
from mt.data.tokenizer import train_tokenizer
from mt.decode.translator import translate
from mt.errors import DataError
from mt.model.transformer import Transformer
from mt.translate import chunks, stdin_lines
from tests.conftest import toy_pairs

FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def translator():
    pairs = toy_pairs(200)
    tokenizer = train_tokenizer([s for s, _ in pairs], [t for _, t in pairs], vocab_size=64)
    torch.manual_seed(0)
    cfg = ModelConfig(d_model=16, n_heads=2, encoder_layers=1, decoder_layers=1, d_ff=32, dropout=0.0)
    model = Transformer(cfg, src_vocab_size=tokenizer.src_vocab_size, tgt_vocab_size=tokenizer.tgt_vocab_size)
    return model.eval(), tokenizer


@FUZZ
@given(st.binary(max_size=300))
@example(b"\xef\xbb\xbf")  # nothing but a BOM: no lines
@example(b"\xef\xbb\xbfab\r\ncd")  # a BOM, then valid lines
@example(b"ab\ncd\xe2\n")  # a sequence cut short before the newline, on line 2 at byte 5
@example(b"\xef\xbb\xbfa\n\xff")  # an invalid byte after a BOM: the offset counts the BOM
def test_read_lines_never_crashes_on_bytes(tmp_path, payload):
    path = tmp_path / "input.txt"
    path.write_bytes(payload)
    try:
        lines = read_lines(path)
    except DataError as error:
        # refused only if Python's own decoder refuses the bytes too, at the same line and byte
        with pytest.raises(UnicodeDecodeError) as decoding:
            payload.decode("utf-8")
        start = decoding.value.start
        line = payload[:start].count(b"\n") + 1
        assert str(error).startswith(f"{path}:{line}: invalid UTF-8 (")
        assert str(error).endswith(f" at byte {start})")
        return
    text = payload.decode("utf-8-sig")  # the reader drops a leading BOM, as utf-8-sig does
    assert len(lines) == text.count("\n") + (0 if text.endswith("\n") or not text else 1)


@FUZZ
@given(st.lists(st.text(max_size=40), max_size=8))
def test_translate_keeps_one_output_per_input_line(translator, sentences):
    model, tokenizer = translator
    lines = [s.replace("\n", " ") for s in sentences]
    outputs = translate(model, tokenizer, lines, SearchConfig(beam=2, max_len_a=0.5, max_len_b=3))
    assert len(outputs) == len(lines)
    for line, nbest in zip(lines, outputs):
        assert all("\n" not in text for text, _ in nbest)
        if not line.strip():
            assert nbest == [("", 0.0)]


@FUZZ
@given(
    st.lists(st.text(alphabet=st.characters(blacklist_characters="\n\r"), max_size=10), max_size=30), st.integers(1, 7)
)
def test_translate_chunks_keep_every_line_in_order(lines, size):
    assert [line for chunk in chunks((f"{x}\n" for x in lines), size) for line in chunk] == lines


@settings(FUZZ, max_examples=150)
@given(st.text(alphabet=st.sampled_from(["a", "ß", " ", "\r", "\n", "\t", "é"]), max_size=60), st.integers(1, 4))
@example("a\r\r\nb\r\n\r\n", 2)  # a doubled carriage return before the ending keeps one; a CRLF line stays empty
def test_the_stdin_path_reads_the_lines_the_file_reader_reads(translator, tmp_path, text, size):
    """Standard input, carriage returns included, gives the lines ``read_lines`` gives for the same bytes (one
    ``\n`` or ``\r\n`` ending removed; a lone or doubled ``\r`` kept), and one translation for each."""
    import io

    payload = text.encode("utf-8")
    (tmp_path / "input.txt").write_bytes(payload)
    expected = read_lines(tmp_path / "input.txt")
    got = [line for chunk in chunks(stdin_lines(io.BytesIO(payload)), size) for line in chunk]
    assert got == expected
    model, tokenizer = translator
    outputs = translate(model, tokenizer, got, SearchConfig(beam=1, max_len_a=0.5, max_len_b=3), return_scores=False)
    assert len(outputs) == len(expected)
