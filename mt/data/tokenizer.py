"""SentencePiece subwords: training, loading, encoding, decoding; the only home of special ids.

A ``Tokenizer`` holds one SentencePiece model per side (the same one twice for a joint
vocabulary). Its models serialise to bytes, so a checkpoint carries them and a ``.ckpt`` file
alone is enough to translate.
"""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

import sentencepiece as spm

from mt.atomic import atomic_write
from mt.data.sampling import reservoir_sample
from mt.errors import DataError, TokenizerError, listing

log = logging.getLogger(__name__)

# Special ids, fixed for every model this package trains.
PAD_ID = 0
UNK_ID = 1
BOS_ID = 2
EOS_ID = 3
SPECIAL_PIECES = ("<pad>", "<unk>", "<s>", "</s>")  # the pieces of PAD_ID, UNK_ID, BOS_ID, EOS_ID in a vocabulary

MAX_SENTENCE_BYTES = 4192  # SentencePiece's max_sentence_length: longer lines are left out of its training

# What OPUS-MT's language codes look like at the start of a source (>>fr<<, >>cmn_Hans<<, >>pt_BR<<), as opposed to
# text in ASCII quotes (>>Hallo<<, sagte er.), which MarianTokenizer reads as one unknown piece all the same.
LANGUAGE_CODE = re.compile(r">>[a-z]{2,3}(?:_[A-Za-z]{2,4})?<<")


def language_token(lang: str) -> str:
    """The target-language token of ``lang`` (``<2de>``): a control symbol that starts each source."""
    return f"<2{lang}>"


def token_language(symbol: str) -> str | None:
    """The language of a target-language token (``<2de>``: ``de``), else None."""
    return symbol[2:-1] if len(symbol) > 3 and symbol.startswith("<2") and symbol.endswith(">") else None


def language_code(lang: str) -> str:
    """OPUS-MT's target-language code of ``lang`` (``>>de<<``): what Hugging Face Marian models and
    ``MarianTokenizer`` know as the token that starts a source."""
    return f">>{lang}<<"


def code_language(piece: str) -> str | None:
    """The language of an OPUS-MT code (``>>de<<``: ``de``), else None."""
    return piece[2:-2] if len(piece) > 4 and piece.startswith(">>") and piece.endswith("<<") else None


def _processor(model_proto: bytes, origin: str, *, check_ids: bool = True) -> spm.SentencePieceProcessor:
    processor = spm.SentencePieceProcessor()
    try:
        processor.LoadFromSerializedProto(model_proto)
    except Exception as error:  # sentencepiece raises RuntimeError/OSError with C++ text
        raise TokenizerError(f"{origin}: not a SentencePiece model ({error})") from None
    ids = (processor.pad_id(), processor.unk_id(), processor.bos_id(), processor.eos_id())
    if check_ids and ids != (PAD_ID, UNK_ID, BOS_ID, EOS_ID):
        raise TokenizerError(
            f"{origin}: special ids (pad, unk, bos, eos) are {ids}, expected {(PAD_ID, UNK_ID, BOS_ID, EOS_ID)}"
        )
    return processor


class Tokenizer:
    """Source and target SentencePiece models with shared special ids.

    Args:
        src_model: serialised SentencePiece model for the source side.
        tgt_model: serialised model for the target side; ``None`` or the same bytes for a joint
            vocabulary.
        vocab: the pieces by id, for models whose ids are not SentencePiece's (imported Hugging Face Marian
            models: two SentencePiece models over one ``vocab.json``). It starts with ``SPECIAL_PIECES``; both
            sides map SentencePiece's pieces to ids through it, a piece it lacks becoming UNK (as
            ``MarianTokenizer`` does), and a source may start with a language code such as ``>>de<<``, kept
            whole. ``None``: ids are SentencePiece's own (every model this package trains).
    """

    pad_id = PAD_ID
    unk_id = UNK_ID
    bos_id = BOS_ID
    eos_id = EOS_ID

    def __init__(
        self,
        src_model: bytes,
        tgt_model: bytes | None = None,
        *,
        vocab: Sequence[str] | None = None,
        origin: str = "tokenizer",
    ) -> None:
        self.src_model = src_model
        self.tgt_model = src_model if tgt_model is None else tgt_model
        self.origin = origin
        self.vocab = None if vocab is None else list(vocab)
        self.src = _processor(self.src_model, origin, check_ids=vocab is None)
        self.tgt = self.src if self.joint else _processor(self.tgt_model, origin, check_ids=vocab is None)
        self._ids: dict[str, int] | None = None
        if self.vocab is not None:
            if tuple(self.vocab[:4]) != SPECIAL_PIECES:
                raise TokenizerError(
                    f"{origin}: its vocabulary starts {self.vocab[:4]}, expected {list(SPECIAL_PIECES)}"
                )
            self._ids = {piece: i for i, piece in enumerate(self.vocab)}
            if len(self._ids) != len(self.vocab):
                raise TokenizerError(f"{origin}: its vocabulary lists a piece twice")

    @property
    def joint(self) -> bool:
        return self.src_model == self.tgt_model

    @property
    def src_vocab_size(self) -> int:
        return len(self.vocab) if self.vocab is not None else self.src.get_piece_size()

    @property
    def tgt_vocab_size(self) -> int:
        return len(self.vocab) if self.vocab is not None else self.tgt.get_piece_size()

    def encode_src(self, sentences: Sequence[str], num_threads: int = -1) -> list[list[int]]:
        """Subword ids without BOS/EOS (the batcher adds them)."""
        if self._ids is None:
            return self.src.encode(list(sentences), num_threads=num_threads)
        return [self._piece_ids(self.src, sentence, codes=True) for sentence in sentences]

    def encode_tgt(self, sentences: Sequence[str], num_threads: int = -1) -> list[list[int]]:
        if self._ids is None:
            return self.tgt.encode(list(sentences), num_threads=num_threads)
        return [self._piece_ids(self.tgt, sentence) for sentence in sentences]

    def _piece_ids(self, processor: spm.SentencePieceProcessor, text: str, *, codes: bool = False) -> list[int]:
        ids = self._ids
        code: list[int] = []
        if codes and text.startswith(">>") and (end := text.find("<<")) != -1:  # MarianTokenizer's language code
            code, text = [ids.get(text[: end + 2], UNK_ID)], text[end + 2 :]
        return code + [ids.get(piece, UNK_ID) for piece in processor.encode(text, out_type=str)]

    def decode_tgt(self, ids: Sequence[Sequence[int]]) -> list[str]:
        """Detokenized text; special ids are dropped."""
        kept = [[i for i in seq if i > EOS_ID] for seq in ids]
        if self.vocab is None:
            return self.tgt.decode(kept)
        return [self.tgt.decode_pieces([self.vocab[i] for i in seq]) for seq in kept]

    def symbol_id(self, symbol: str) -> int:
        """The source id of a control symbol (a tag or a language token), else a ``TokenizerError``. In an
        imported vocabulary the language token ``<2de>`` is OPUS-MT's code ``>>de<<``."""
        if self.vocab is None:
            i = self.src.piece_to_id(symbol)
            if self.src.id_to_piece(i) == symbol and self.src.is_control(i):
                return i
        elif (lang := token_language(symbol)) is None:
            raise TokenizerError(
                f"{self.origin}: an imported vocabulary has no tag {symbol}: it holds language codes (>>xx<<) only"
            )
        elif language_code(lang) in self._ids:
            return self._ids[language_code(lang)]
        else:
            raise TokenizerError(
                f"{self.origin}: has no language code >>{lang}<< for {symbol} "
                f"(its codes: {listing(self.language_tokens()) or 'none'}); name the target language by its code"
            )
        raise TokenizerError(
            f"{self.origin}: has no symbol {symbol} (it was trained with {self.symbols() or 'none'}); "
            f"tags and language tokens are trained into a tokenizer, so train this data in a new run directory "
            f"(init_from keeps the checkpoint's tokenizer: its data cannot add any)"
        )

    def symbols(self) -> list[str]:
        """The source model's control symbols other than the special pieces: tags and language tokens (an
        imported vocabulary's are its language codes)."""
        if self.vocab is not None:
            return [piece for piece in self.vocab if code_language(piece) is not None]
        if not hasattr(self, "_symbols"):
            self._symbols = [
                self.src.id_to_piece(i) for i in range(EOS_ID + 1, self.src_vocab_size) if self.src.is_control(i)
            ]
        return self._symbols

    def language_tokens(self) -> dict[str, int]:
        """The target languages of a multilingual model and their token ids (``<2de>``, or OPUS-MT's ``>>de<<``
        in an imported vocabulary); empty for others."""
        if not hasattr(self, "_languages"):  # once (a copy is returned)
            if self.vocab is not None:
                found = {lang: self._ids[piece] for piece in self.symbols() if (lang := code_language(piece))}
            else:
                found = {lang: self.src.piece_to_id(s) for s in self.symbols() if (lang := token_language(s))}
            self._languages = found
        return dict(self._languages)

    def prefixed(self, ids: list[int], sentence: str, prefix: Sequence[int] = ()) -> list[int]:
        """``prefix`` (a corpus's tag, a target-language token), then the ids of the source ``sentence``.

        A source of an imported multilingual vocabulary may start with a language code of its own (``>>fr<<
        text``, one token as ``MarianTokenizer`` reads it); where ``prefix`` ends with the same code, the code
        is there once.

        Raises:
            DataError: (without the line: the caller adds it) the source starts with a code the vocabulary lacks
                (which would be read as an unknown piece), or another than the one ``prefix`` puts first.
        """
        if self.vocab is None or not ids:
            return [*prefix, *ids]
        if not hasattr(self, "_language_of"):  # once: this runs for every source of a corpus
            self._language_of = {i: lang for lang, i in self.language_tokens().items()}
        if not self._language_of:
            return [*prefix, *ids]
        language = self._language_of
        if ids[0] == UNK_ID and (code := LANGUAGE_CODE.match(sentence)):
            raise DataError(f"starts with {code.group()}, not one of the model's codes ({listing(self._languages)})")
        if prefix and ids[0] != prefix[-1] and ids[0] in language and prefix[-1] in language:
            own, asked = language[ids[0]], language[prefix[-1]]
            raise DataError(
                f"starts with {language_code(own)}, but {language_code(asked)} is put first to translate into "
                f"{asked}: give the target language one way"
            )
        return [*prefix, *(ids[1:] if prefix and ids[0] == prefix[-1] else ids)]

    def src_pieces(self) -> list[str]:
        """The source vocabulary as SentencePiece pieces, by id."""
        if self.vocab is not None:
            return list(self.vocab)
        return [self.src.id_to_piece(i) for i in range(self.src_vocab_size)]

    def tgt_pieces(self) -> list[str]:
        """The target vocabulary as SentencePiece pieces, by id."""
        if self.vocab is not None:
            return list(self.vocab)
        return [self.tgt.id_to_piece(i) for i in range(self.tgt_vocab_size)]

    def to_state(self) -> dict:
        """What a checkpoint stores: the serialised models (and the vocabulary, when it is not theirs)."""
        state: dict = {"src_model": self.src_model, "tgt_model": self.tgt_model}
        if self.vocab is not None:
            state["vocab"] = list(self.vocab)
        return state

    @classmethod
    def from_state(cls, state: dict, *, origin: str = "checkpoint") -> Tokenizer:
        if not isinstance(state, dict) or "src_model" not in state:
            raise TokenizerError(f"{origin}: holds no tokenizer (expected keys src_model, tgt_model)")
        return cls(state["src_model"], state.get("tgt_model"), vocab=state.get("vocab"), origin=origin)

    def save(self, directory: str | Path) -> None:
        """Write ``spm.model`` (joint) or ``spm.src.model`` and ``spm.tgt.model``, and ``vocab.json`` for a
        vocabulary of its own."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        files = (
            {"spm.model": self.src_model}
            if self.joint
            else {"spm.tgt.model": self.tgt_model, "spm.src.model": self.src_model}  # load looks for src: last
        )
        if self.vocab is not None:  # written first: load reads it only beside a model
            files = {"vocab.json": json.dumps(self.vocab, ensure_ascii=False).encode(), **files}
        for name, payload in files.items():
            with atomic_write(directory / name) as handle:
                handle.write(payload)

    @classmethod
    def load(cls, directory: str | Path) -> Tokenizer | None:
        """The tokenizer saved in ``directory``, or ``None`` if there is none."""
        directory = Path(directory)
        vocab_file = directory / "vocab.json"
        vocab = json.loads(vocab_file.read_text(encoding="utf-8")) if vocab_file.exists() else None
        if (directory / "spm.model").exists():
            path = directory / "spm.model"
            return cls(path.read_bytes(), vocab=vocab, origin=str(path))
        if (directory / "spm.src.model").exists():
            return cls(
                (directory / "spm.src.model").read_bytes(),
                (directory / "spm.tgt.model").read_bytes(),
                vocab=vocab,
                origin=str(directory),
            )
        return None


def train_sentencepiece(
    sentences: Iterable[str],
    *,
    vocab_size: int,
    model_type: str = "unigram",
    character_coverage: float = 1.0,
    input_sentence_size: int = 2_000_000,
    seed: int = 1,
    control_symbols: Sequence[str] = (),
) -> bytes:
    """Train one SentencePiece model on ``sentences`` and return it serialised.

    Sentences beyond ``input_sentence_size`` are subsampled (reservoir sampling, seeded), so a
    corpus of millions of pairs trains on a bounded sample. ``control_symbols`` (tags, language tokens) get
    ids of their own after the special ids: never matched in text, dropped when decoding.
    """
    sample = reservoir_sample(sentences, input_sentence_size, seed)
    if not sample:
        raise TokenizerError("cannot train SentencePiece on an empty corpus")
    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(sample),
            model_writer=model,
            vocab_size=vocab_size,
            model_type=model_type,
            character_coverage=character_coverage,
            pad_id=PAD_ID,
            unk_id=UNK_ID,
            bos_id=BOS_ID,
            eos_id=EOS_ID,
            hard_vocab_limit=False,  # small corpora may not support the full size
            control_symbols=list(control_symbols),
            num_threads=2,
            minloglevel=2,
        )
    except RuntimeError as error:  # e.g. a vocabulary smaller than the corpus's characters
        reason = str(error).strip().splitlines()[-1]
        if "sentences_.empty()" in reason:  # SentencePiece dropped every line as too long
            raise TokenizerError(
                f"SentencePiece found no sentence of at most {MAX_SENTENCE_BYTES} bytes to train on ({reason}): "
                f"expected one sentence a line (are the lines ended by \\r alone, or is each line a document?)"
            ) from None
        raise TokenizerError(
            f"SentencePiece cannot train a {vocab_size}-piece {model_type} vocabulary on this corpus ({reason}): "
            f"raise tokenizer.vocab_size or lower tokenizer.character_coverage"
        ) from None
    serialized = model.getvalue()
    pieces = spm.SentencePieceProcessor(model_proto=serialized).get_piece_size()
    if pieces < vocab_size:  # hard_vocab_limit=False: a small corpus may not support the size asked for
        log.warning(
            "SentencePiece learnt %d pieces of the %d asked for (tokenizer.vocab_size): the corpus has no more",
            pieces,
            vocab_size,
        )
    return serialized


def train_tokenizer(
    src_sentences: Sequence[str],
    tgt_sentences: Sequence[str],
    *,
    vocab_size: int,
    joint: bool = True,
    model_type: str = "unigram",
    character_coverage: float = 1.0,
    input_sentence_size: int = 2_000_000,
    seed: int = 1,
    symbols: Sequence[str] = (),
) -> Tokenizer:
    """Train a joint or a per-side SentencePiece tokenizer on the training split; ``symbols`` (control symbols
    that start sources: tags, language tokens) go into the source model."""
    options = dict(
        vocab_size=vocab_size,
        model_type=model_type,
        character_coverage=character_coverage,
        input_sentence_size=input_sentence_size,
        seed=seed,
    )
    if joint:
        both = (s for pair in zip(src_sentences, tgt_sentences) for s in pair)
        return Tokenizer(
            train_sentencepiece(
                both, **{**options, "input_sentence_size": 2 * input_sentence_size}, control_symbols=symbols
            )
        )
    return Tokenizer(
        train_sentencepiece(src_sentences, **options, control_symbols=symbols),
        train_sentencepiece(tgt_sentences, **options),
    )
