"""Decoding speed: ``mt``'s search against Hugging Face ``generate()`` and CTranslate2, in one process.

Two comparisons, each repeated ``--rounds`` times in alternating order (medians, min-max):

1. **Real lengths, trained weights** (``--checkpoint``, on test_2016_flickr or ``--source/--reference``):
   ``mt`` beam 5 and greedy (batches of ``--batch`` sentences, and ``max_tokens`` batches), and the
   same weights exported to CTranslate2 (``mt.export``) in float32 and int8. Every row reports BLEU,
   so a fast but broken decoder cannot pass. Length normalisation is the same in both (score /
   length, CTranslate2's ``length_penalty=1``; ``mt``'s ``length_penalty_type=average``).
2. **Same work, same shape**: an ``mt`` model and a ``transformers.MarianMTModel`` of the checkpoint's
   shape (random weights: no trained Marian exists here; ``mt``'s pre-norm model cannot be loaded
   into post-norm Marian), every output forced to ``L`` tokens (``mt``: ``min_len``; HF:
   ``min_new_tokens``/``max_new_tokens``), so both run the same number of decoder steps. Both decode
   the same length-sorted batches of ``--batch`` sentences (the targets' comparison); ``mt`` also with
   its default ``max_tokens`` batches, as its users run it (reported beside HF's batches, not as the target).

Sentences/s and generated target tokens/s are reported per row, and the ratios the targets are
stated in: mt beam 5 / HF beam 5 and mt greedy / HF greedy (target >= 1.6), mt beam 5 /
CTranslate2 float32 (target >= 0.8). Each ratio is taken within a round, between runs seconds
apart, and reported as the median (min-max) over rounds: on a shared machine whose speed drifts by
tens of percent between minutes, that is steadier than a ratio of two medians.

``--bf16`` adds mt's beam 5 and greedy under ``torch.autocast("cpu", torch.bfloat16)`` (BLEU shows
whether quality holds; the speed depends on the CPU: native bf16 needs AVX-512 BF16 or AMX).

    python scripts/bench_decode.py --checkpoint outputs/main/checkpoints/best.ckpt   # MT_DATA_DIR data
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from mt.config import DataConfig, SearchConfig, from_dict  # noqa: E402
from mt.data.batching import pad_sequences  # noqa: E402
from mt.data.corpus import load_split  # noqa: E402
from mt.data.readers import read_lines  # noqa: E402
from mt.data.tokenizer import EOS_ID, PAD_ID  # noqa: E402
from mt.decode.metrics import bleu  # noqa: E402
from mt.decode.translator import decode_ids  # noqa: E402
from mt.errors import USER_ERRORS  # noqa: E402
from mt.model.checkpoint import load_checkpoint  # noqa: E402
from mt.model.transformer import Transformer  # noqa: E402


def timed(function):
    start = time.perf_counter()
    result = function()
    return time.perf_counter() - start, result


def mt_decoder(model, src_ids: list, search: SearchConfig, batch: int | None, *, bf16: bool = False):
    """A function decoding all sources with mt: batches of ``batch`` sentences, or max_tokens batches;
    under bf16 autocast if ``bf16``."""

    def run() -> list[list[int]]:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            if batch is None:
                return [nbest[0].tokens for nbest in decode_ids(model, src_ids, search, return_scores=False)]
            budget = dataclasses.replace(search, max_tokens=10**9)  # batches of exactly ``batch`` sentences
            order = sorted(range(len(src_ids)), key=lambda i: len(src_ids[i]))  # mt sorts by length itself
            results: dict[int, list[int]] = {}
            for start in range(0, len(order), batch):
                chunk = order[start : start + batch]
                chunk_ids = [src_ids[i] for i in chunk]
                for i, nbest in zip(chunk, decode_ids(model, chunk_ids, budget, return_scores=False)):
                    results[i] = nbest[0].tokens
            return [results[i] for i in range(len(src_ids))]

    return run


def ct2_decoder(
    model_dir: Path,
    pieces: list[list[str]],
    beam: int,
    batch: int,
    compute_type: str,
    threads: int,
    search: SearchConfig,
    *,
    inter=False,
):
    """CTranslate2 on ``threads`` threads: all on each batch, or (``inter``) batches at once, one thread each. The
    batches are ``mt``'s (``batch`` sentences in length order), each capped at the output length ``mt`` gives its
    longest source (``search.max_len_a`` x source tokens with EOS + ``max_len_b``, EOS included) and free to end at
    the first token, as ``mt``'s search is, so that both decode the same work. ``mt`` caps each sentence by its own
    length: the two differ only for an output that reaches its cap in a batch of longer sources (the table's
    tokens a sentence shows it)."""
    import ctranslate2

    split = {"inter_threads": threads, "intra_threads": 1} if inter else {"intra_threads": threads}
    translator = ctranslate2.Translator(str(model_dir), device="cpu", compute_type=compute_type, **split)
    order = sorted(range(len(pieces)), key=lambda i: len(pieces[i]))
    batches = [order[start : start + batch] for start in range(0, len(order), batch)]

    def cap(chunk: list[int]) -> int:
        """ct2's max_decoding_length for ``chunk``: tokens before EOS, where mt's limit counts EOS too."""
        longest = max(len(pieces[i]) for i in chunk) + 1  # the EOS ct2 appends (add_source_eos), as mt does
        return max(1, min(search.max_len, math.floor(search.max_len_a * longest + search.max_len_b)) - 1)

    def run() -> list[list[str]]:
        pending = [  # submitted at once: with inter_threads, batches decode side by side
            translator.translate_batch(
                [pieces[i] for i in chunk],
                beam_size=beam,
                length_penalty=1.0 if beam > 1 else 0.0,
                max_batch_size=batch,
                batch_type="examples",
                max_decoding_length=cap(chunk),
                min_decoding_length=0,
                asynchronous=True,
            )
            for chunk in batches
        ]
        results: dict[int, list[str]] = {}
        for chunk, answers in zip(batches, pending):
            for i, answer in zip(chunk, answers):
                results[i] = answer.result().hypotheses[0]
        return [results[i] for i in range(len(pieces))]

    return run


def hf_marian(model_cfg, vocab_size: int):
    from transformers import MarianConfig, MarianMTModel

    config = MarianConfig(
        vocab_size=vocab_size,
        d_model=model_cfg.d_model,
        encoder_layers=model_cfg.encoder_layers,
        decoder_layers=model_cfg.decoder_layers,
        encoder_attention_heads=model_cfg.n_heads,
        decoder_attention_heads=model_cfg.n_heads,
        encoder_ffn_dim=model_cfg.d_ff,
        decoder_ffn_dim=model_cfg.d_ff,
        activation_function=model_cfg.activation,
        scale_embedding=True,
        share_encoder_decoder_embeddings=True,
        tie_word_embeddings=True,
        max_position_embeddings=512,
        pad_token_id=PAD_ID,
        eos_token_id=EOS_ID,
        decoder_start_token_id=2,
        forced_eos_token_id=None,
    )
    return MarianMTModel(config).eval()


def hf_decoder(model, src_ids: list, beam: int, batch: int, length: int):
    def run() -> int:
        generated = 0
        with torch.inference_mode():
            for start in range(0, len(src_ids), batch):
                ids = pad_sequences(src_ids[start : start + batch], suffix=EOS_ID)
                out = model.generate(
                    input_ids=ids,
                    attention_mask=(ids != PAD_ID).long(),
                    num_beams=beam,
                    do_sample=False,
                    min_new_tokens=length,
                    max_new_tokens=length,
                    early_stopping=False,
                )
                generated += int((out[:, 1:] != PAD_ID).sum())
        return generated

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--source", help="plain-text source (default: the checkpoint data's test split)")
    parser.add_argument("--reference")
    parser.add_argument("--sentences", type=int, default=1000)
    parser.add_argument("--forced-sentences", type=int, default=500, help="sentences for the same-work comparison")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--bf16", action="store_true", help="add mt beam 5 and greedy under bf16 autocast")
    args = parser.parse_args()
    for flag in ("sentences", "forced_sentences", "batch", "rounds", "threads"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')} {getattr(args, flag)}: expected 1 or more")
    if (args.source is None) != (args.reference is None):
        parser.error("--source and --reference go together (default: the checkpoint data's test split)")
    try:
        benchmark(args)
    except USER_ERRORS as error:
        sys.exit(f"error: {error}")


def benchmark(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)

    loaded = load_checkpoint(args.checkpoint)
    tokenizer, model = loaded.tokenizer, loaded.model
    if args.source:
        sources, references = read_lines(args.source), read_lines(args.reference)
    else:
        text = load_split(from_dict(DataConfig, loaded.data), "test")
        sources, references = text.src, text.tgt
    sources, references = sources[: args.sentences], references[: args.sentences]
    src_ids = tokenizer.encode_src(sources)
    pieces = [[tokenizer.src.id_to_piece(i) for i in sentence] for sentence in src_ids]

    from mt.export import export_ctranslate2

    ct2_dir = export_ctranslate2(args.checkpoint, Path(tempfile.mkdtemp(prefix="mt-ct2-")) / "model")

    beam5 = SearchConfig(beam=5, length_penalty=1.0, length_penalty_type="average")
    greedy = SearchConfig(beam=1, length_penalty=0.0, length_penalty_type="none")
    real = {  # each mt row next to its CTranslate2 peer, so that the two run seconds apart
        "mt beam 5, batch": mt_decoder(model, src_ids, beam5, args.batch),
        "ct2 fp32 beam 5": ct2_decoder(ct2_dir, pieces, 5, args.batch, "float32", args.threads, beam5),
        # mt's max_tokens batches decode at once on threads of one core each (search.parallel_batches);
        # CTranslate2 does the same with inter_threads: its peer for those rows.
        "mt beam 5, max_tokens": mt_decoder(model, src_ids, beam5, None),
        "ct2 fp32 beam 5, inter": ct2_decoder(
            ct2_dir, pieces, 5, args.batch, "float32", args.threads, beam5, inter=True
        ),
        "ct2 int8 beam 5": ct2_decoder(ct2_dir, pieces, 5, args.batch, "int8", args.threads, beam5),
        "mt greedy, batch": mt_decoder(model, src_ids, greedy, args.batch),
        "ct2 fp32 greedy": ct2_decoder(ct2_dir, pieces, 1, args.batch, "float32", args.threads, greedy),
        "mt greedy, max_tokens": mt_decoder(model, src_ids, greedy, None),
        "ct2 fp32 greedy, inter": ct2_decoder(
            ct2_dir, pieces, 1, args.batch, "float32", args.threads, greedy, inter=True
        ),
        "ct2 int8 greedy": ct2_decoder(ct2_dir, pieces, 1, args.batch, "int8", args.threads, greedy),
    }
    if args.bf16:
        real["mt beam 5, bf16"] = mt_decoder(model, src_ids, beam5, args.batch, bf16=True)
        real["mt greedy, bf16"] = mt_decoder(model, src_ids, greedy, args.batch, bf16=True)
    length = round(sum(len(t) for t in tokenizer.encode_tgt(references)) / len(references)) + 1
    # Sorted by length once, so HF's batches are mt's: the same sentences, the same padding (mt sorts by
    # length itself; HF's generate() decodes the batches it is given, and corpus-order batches of 64
    # would give it ~20% more padded work).
    forced_ids = sorted(src_ids[: args.forced_sentences], key=len)
    torch.manual_seed(0)
    vocab = {"src_vocab_size": tokenizer.src_vocab_size, "tgt_vocab_size": tokenizer.tgt_vocab_size}
    random_mt = Transformer(loaded.model_config, **vocab).eval()
    torch.manual_seed(0)
    marian = hf_marian(loaded.model_config, tokenizer.tgt_vocab_size)
    forced_search = {  # length - 1 tokens, then EOS: ``length`` decoder steps, as HF's ``length`` new tokens
        beam: SearchConfig(beam=beam, length_penalty_type="none", min_len=length - 1, max_len_a=0.0, max_len_b=length)
        for beam in (1, 5)
    }
    same_work = {
        "mt beam 5 (forced)": mt_decoder(random_mt, forced_ids, forced_search[5], args.batch),
        "hf beam 5 (forced)": hf_decoder(marian, forced_ids, 5, args.batch, length),
        "mt greedy (forced)": mt_decoder(random_mt, forced_ids, forced_search[1], args.batch),
        "hf greedy (forced)": hf_decoder(marian, forced_ids, 1, args.batch, length),
        # mt's own batching (max_tokens, the default) on the same work: context, not the target's comparison
        "mt beam 5 (forced), max_tokens": mt_decoder(random_mt, forced_ids, forced_search[5], None),
        "mt greedy (forced), max_tokens": mt_decoder(random_mt, forced_ids, forced_search[1], None),
    }

    seconds: dict[str, list[float]] = {name: [] for name in [*real, *same_work]}
    outputs: dict[str, list] = {}
    generated: dict[str, int] = {}
    for r in range(args.rounds):
        names = list(seconds) if r % 2 == 0 else list(reversed(seconds))
        for name in names:
            run = real.get(name) or same_work[name]
            elapsed, result = timed(run)
            seconds[name].append(elapsed)
            if isinstance(result, int):
                generated[name] = result
            else:
                outputs[name] = result
                generated[name] = sum(len(h) + 1 for h in result)  # tokens and EOS
            print(f"round {r + 1} {name:30s} {elapsed:7.2f} s", file=sys.stderr, flush=True)

    def text_of(name: str) -> list[str]:
        hyps = outputs[name]
        if name.startswith("ct2"):
            return [tokenizer.tgt.decode_pieces(h) for h in hyps]
        return tokenizer.decode_tgt(hyps)

    print(
        f"\n{args.checkpoint}: {len(sources)} sentences ({len(forced_ids)} forced to {length} tokens), batch "
        f"{args.batch}, {args.threads} threads, torch {torch.__version__}, "
        f"CPU capability {torch.backends.cpu.get_cpu_capability()}\n"
    )
    print(f"{'decoder':32s} {'sentences/s':>22s} {'tgt tokens/s':>13s} {'tokens/sent':>11s} {'BLEU':>6s}")
    for name, times in seconds.items():
        count = len(forced_ids) if name in same_work else len(sources)
        median = statistics.median(times)
        score = "" if name in same_work else f"{bleu(text_of(name), [references]).score:6.2f}"
        spread = f"({count / max(times):.0f}-{count / min(times):.0f})"
        per_sentence = generated[name] / count  # unequal work shows here (EOS included)
        print(
            f"{name:32s} {count / median:10.1f} {spread:>11s} {generated[name] / median:13,.0f} "
            f"{per_sentence:11.1f} {score:>6s}"
        )
    print("\nspeed ratios, per round (their seconds / ours), median (min-max):")
    for ours, theirs, target in (
        ("mt beam 5 (forced)", "hf beam 5 (forced)", 1.6),
        ("mt greedy (forced)", "hf greedy (forced)", 1.6),
        ("mt beam 5 (forced), max_tokens", "hf beam 5 (forced)", None),
        ("mt greedy (forced), max_tokens", "hf greedy (forced)", None),
        ("mt beam 5, batch", "ct2 fp32 beam 5", 0.8),
        ("mt beam 5, max_tokens", "ct2 fp32 beam 5", None),
        ("mt greedy, batch", "ct2 fp32 greedy", None),
        ("mt greedy, max_tokens", "ct2 fp32 greedy", None),
        ("mt beam 5, max_tokens", "ct2 fp32 beam 5, inter", None),
        ("mt greedy, max_tokens", "ct2 fp32 greedy, inter", None),
        ("mt beam 5, bf16", "mt beam 5, batch", None),
        ("mt greedy, bf16", "mt greedy, batch", None),
    ):
        if ours not in seconds:
            continue
        ratios = [t / o for o, t in zip(seconds[ours], seconds[theirs])]
        goal = f"  (target >= {target})" if target else ""
        print(f"{ours} / {theirs}: {statistics.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f}){goal}")


if __name__ == "__main__":
    main()
