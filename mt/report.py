"""``python -m mt.report run=outputs/RUN [average_last=N] [test_splits=[a,b]] [sources=[..] references=[..]]
[baseline=best]``.

Decodes every checkpoint of one run or several (and the average of the last N step checkpoints) on
each test set with each checkpoint's own search (``search.*`` on the command line wins), and writes
``report.md`` (a table: checkpoint, step, validation BLEU, each test set's BLEU, chrF and TER, and with
``baseline=LABEL`` the paired bootstrap p-value of each checkpoint's BLEU against that checkpoint's),
``report.json`` and ``report.png`` (BLEU against step, one line per test set). ``references=`` gives one
entry per source file: a file, or a list of files for several references. Decodes are cached under
``<run>/report_cache/``, keyed by the checkpoint file, the search settings and the test set, so a second
report only decodes what is new.

With ``runs=[...]`` each row is labelled by the shortest end of its run directory's path that no other run's path
ends with (``s1/0/best`` and ``s2/0/best`` for the ``0`` jobs of two sweeps, ``1/best`` beside them); ``baseline=``
takes a label or any end of ``RUN_PATH/CHECKPOINT`` that names exactly one row. A row whose translations are the
baseline's, line for line, is not tested: ``report.json`` gives it ``"paired_bootstrap": {"identical_to_baseline":
true}`` and no p-value (every tested row has ``"identical_to_baseline": false``), ``report.md`` shows ``= baseline``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from mt.atomic import atomic_write, file_version, refuse_unwritable_folder
from mt.cli import entry_point, set_on_command_line
from mt.config import DataConfig, MetricsConfig, ReportConfig, SearchConfig, from_dict, saved_search, search_overrides
from mt.data.corpus import load_split
from mt.data.mixture import check_folders, validated
from mt.decode.metrics import BOOTSTRAP_SAMPLES, bleu_metric, paired_bootstrap, scores
from mt.decode.scoring import read_source_and_references
from mt.decode.translator import translate
from mt.device import best_device, set_threads
from mt.errors import DataError, RunError
from mt.model.averaging import average_checkpoints
from mt.model.checkpoint import (
    checkpoint_configs,
    load_checkpoint,
    newest_checkpoints,
    read_checkpoint,
    step_checkpoints,
)


@dataclass
class TestSet:
    name: str
    sources: list[str]
    references: list[list[str]]  # one or more reference streams
    tgt_lang: str | None = None  # the language to translate into (a model of several: data.lang_tokens)
    direction: str | None = None  # e.g. de-en: a test split of data of several directions

    def digest(self) -> str:
        text = "\n".join(self.sources) + "".join("\0" + "\n".join(stream) for stream in self.references)
        return hashlib.sha256((text + f"\0{self.tgt_lang}").encode("utf-8")).hexdigest()[:16]


def run_checkpoints(run_dir: Path) -> list[Path]:
    """The run's checkpoints: step checkpoints by step, then best and last."""
    directory = run_dir / "checkpoints"
    if not directory.is_dir():
        raise RunError(f"run={run_dir}: no checkpoints/ directory (is it a training run directory?)")
    found = step_checkpoints(run_dir)
    found += [directory / name for name in ("best.ckpt", "last.ckpt") if (directory / name).is_file()]
    if not found:
        raise RunError(f"run={run_dir}: checkpoints/ holds no .ckpt file")
    return found


def checkpoint_info(path: Path) -> dict:
    """Step and validation metrics of a checkpoint, read without loading its tensors into memory."""
    checkpoint = read_checkpoint(path)
    hyper = checkpoint.get("hyper_parameters", {})
    return {
        "step": int(checkpoint.get("global_step", 0)),
        "val_bleu": checkpoint.get("val_metrics", {}).get("val/bleu"),
        "data": hyper.get("data"),
        "search": hyper.get("search"),
    }


def averaged_checkpoint(run_dir: Path, count: int) -> Path:
    """The average of the run's last ``count`` step checkpoints, written once into its report cache."""
    inputs = newest_checkpoints(run_dir, count, option="average_last")
    key = hashlib.sha256(json.dumps([file_key(p) for p in inputs]).encode()).hexdigest()[:12]
    output = run_dir / "report_cache" / f"avg_last{count}.{key}.ckpt"
    if not output.is_file():
        with atomic_write(output) as handle:
            torch.save(average_checkpoints(inputs), handle)
    return output


def run_labels(runs: list[Path]) -> list[str]:
    """Each run's label: the shortest end of its (absolute) path that no other run's path ends with, so that two
    sweeps' job ``0`` become ``s1/0`` and ``s2/0``. One run: no label. A run directory named twice is refused."""
    if len(runs) == 1:
        return [""]
    named: dict[Path, Path] = {}
    for run in runs:
        earlier = named.setdefault(run.resolve(), run)
        if earlier is not run:
            raise RunError(f"runs: {run} is the same run directory as {earlier}; expected each run once")
    paths = [Path(os.path.abspath(run)).parts for run in runs]
    labels = []
    for parts in paths:
        others = [other for other in paths if other != parts]
        size = next(n for n in range(1, len(parts) + 1) if all(other[-n:] != parts[-n:] for other in others))
        labels.append(Path(*parts[-size:]).as_posix())
    return labels


def resolve_baseline(baseline: str, labels: list[str], paths: list[tuple[str, ...]]) -> str:
    """The label of the one row ``baseline`` names: a label, or an end of a row's ``RUN_PATH/CHECKPOINT``
    (``paths``: their parts)."""
    if baseline in labels:
        return baseline
    wanted = Path(baseline).parts
    matches = [label for label, parts in zip(labels, paths) if wanted and parts[-len(wanted) :] == wanted]
    if not matches:
        raise RunError(f"baseline={baseline}: no such checkpoint; expected one of {', '.join(labels)}")
    if len(matches) > 1:
        raise RunError(
            f"baseline={baseline}: names {len(matches)} checkpoints ({', '.join(matches)}); expected one of them"
        )
    return matches[0]


def is_average(label: str) -> bool:
    return label.rsplit("/", 1)[-1].startswith("avg_last")  # not the run's part of the label: a run may be avg_last*


def file_key(path: Path) -> list:
    """The report cache's key of a file: its ``file_version`` as a list (the keys of earlier reports)."""
    return list(file_version(path).values())


def load_test_sets(config: ReportConfig, data: dict | None) -> list[TestSet]:
    """The checkpoint data's test splits named in ``test_splits`` (default: its test split), of each direction it
    validates, plus the files given (translated into ``config.tgt_lang``).

    Each set is named by its split (and direction, for data of several) or file name, or by the path as given where
    two file names are the same.
    """
    sets: list[TestSet] = []

    def add(name: str, fallback_name: str, found: TestSet, origin: str) -> None:
        if not found.sources:
            raise DataError(f"{origin}: empty test set")
        names = {test_set.name for test_set in sets}
        if name in names:
            name = fallback_name
        if name in names:
            raise RunError(f"{origin}: named twice among the test sets")
        sets.append(dataclasses.replace(found, name=name))

    if data is not None and config.include_data_splits:
        scored = validated(from_dict(DataConfig, data))
        for corpus in scored:
            check_folders(corpus, "as the checkpoints record it: the data moved? pass sources= and references=")
            data_cfg = corpus.data
            on_hub = not data_cfg.path  # the split names are the hub's (data.hub_splits) or the files' (data.splits)
            for split_name in config.test_splits or [data_cfg.hub_splits.test if on_hub else data_cfg.splits.test]:
                if on_hub:
                    hub_splits = dataclasses.replace(data_cfg.hub_splits, test=split_name)
                    split_cfg = dataclasses.replace(data_cfg, hub_splits=hub_splits)
                else:
                    split_cfg = dataclasses.replace(
                        data_cfg, splits=dataclasses.replace(data_cfg.splits, test=split_name)
                    )
                text = load_split(split_cfg, "test")
                name = split_name if len(scored) == 1 else f"{split_name} {corpus.direction}"
                direction = corpus.direction if len(scored) > 1 else None
                found = TestSet(name, text.src, [text.tgt], data_cfg.tgt_lang, direction)
                add(name, name, found, text.origin)
    for source, reference_files in zip(config.sources, config.reference_files):
        sources, references = read_source_and_references(source, reference_files)
        add(Path(source).name, source, TestSet(source, sources, references, config.tgt_lang), source)
    if not sets:
        raise RunError("no test set: the checkpoints record no data config; pass sources=[...] references=[...]")
    return sets


def decode_scores(
    checkpoint: Path,
    test_set: TestSet,
    search: SearchConfig,
    cache_dir: Path,
    metrics: MetricsConfig,
    precision: str = "32",
) -> dict:
    """BLEU, chrF and TER of ``checkpoint`` on ``test_set``, and its hypotheses, from the cache or by decoding
    at ``precision`` (then cached)."""
    key_material = [file_key(checkpoint), dataclasses.asdict(search), test_set.digest(), dataclasses.asdict(metrics)]
    if precision != "32":  # the caches of fp32 decodes keep their keys
        key_material.append(precision)
    key = hashlib.sha256(json.dumps(key_material, sort_keys=True).encode()).hexdigest()[:20]
    cached = cache_dir / f"{key}.json"
    if cached.is_file():
        return json.loads(cached.read_text())
    loaded = load_checkpoint(checkpoint)
    device = best_device()
    hypotheses = [
        nbest[0][0]
        for nbest in translate(
            loaded.model.to(device),
            loaded.tokenizer,
            test_set.sources,
            search,
            device=device,
            return_scores=False,
            src_prefix=loaded.source_prefix(test_set.tgt_lang),
            origin=test_set.name,
            precision=precision,
        )
    ]
    language = loaded.target_language(test_set.tgt_lang)
    result = {
        **scores(hypotheses, test_set.references, tgt_lang=language, bleu_tokenize=metrics.bleu_tokenize),
        "hypotheses": hypotheses,
    }
    with atomic_write(cached) as handle:
        handle.write(json.dumps(result).encode("utf-8"))
    return result


def build_report(config: ReportConfig, search_fields: set[str] | None = None) -> dict:
    """Decode and score every checkpoint. Each decodes with its own saved search, with the ``search_fields`` of
    ``config.search`` (the ones the command line set) over it; None: ``config.search`` as it is."""
    runs = [Path(r) for r in ([config.run] if config.run else config.runs)]
    # (label, checkpoint, run); the labels are unique, for hypotheses are keyed by them
    entries: list[tuple[str, Path, Path]] = []
    row_paths: list[tuple[str, ...]] = []  # each row's absolute RUN_PATH/CHECKPOINT, for baseline=
    for run_dir, run_label in zip(runs, run_labels(runs)):
        prefix = f"{run_label}/" if run_label else ""
        names = [(path.stem, path) for path in run_checkpoints(run_dir)]
        if config.average_last:
            names.append((f"avg_last{config.average_last}", averaged_checkpoint(run_dir, config.average_last)))
        entries += [(prefix + name, path, run_dir) for name, path in names]
        row_paths += [(*Path(os.path.abspath(run_dir)).parts, name) for name, _ in names]
    labels = [label for label, _, _ in entries]
    baseline = None if config.baseline is None else resolve_baseline(config.baseline, labels, row_paths)
    infos = {path: checkpoint_info(path) for _, path, _ in entries}
    first = next(iter(infos.values()))
    test_sets = load_test_sets(config, first["data"])
    # What would fail a decode fails before the first (a multilingual model given no tgt_lang=, a language it was
    # not trained into, a BLEU tokenizer not installed): each run's first checkpoint asked as its decode will be.
    # The language BLEU tokenizes each run's translations of each test set as (a decode's, and its bootstrap's).
    languages: dict[tuple[Path, str], str | None] = {}
    for run_dir in dict.fromkeys(run for _, _, run in entries):
        loaded = checkpoint_configs(next(path for _, path, run in entries if run == run_dir))
        for test_set in test_sets:
            loaded.source_prefix(test_set.tgt_lang)
            languages[run_dir, test_set.name] = loaded.target_language(test_set.tgt_lang)
            bleu_metric(languages[run_dir, test_set.name], config.metrics.bleu_tokenize)
    overrides = search_overrides(config.search, search_fields)

    rows, hypotheses = [], {}
    with tqdm(total=len(entries) * len(test_sets), desc="report", unit="decode") as bar:
        for label, path, run_dir in entries:
            search = saved_search(infos[path]["search"], overrides)
            row = {
                "checkpoint": label,
                "path": str(path),
                "run": str(run_dir),
                **{k: infos[path][k] for k in ("step", "val_bleu")},
                "search": dataclasses.asdict(search),
            }
            for test_set in test_sets:
                found = decode_scores(
                    path, test_set, search, run_dir / "report_cache", config.metrics, config.precision
                )
                hypotheses[label, test_set.name] = found["hypotheses"]
                row[test_set.name] = {k: v for k, v in found.items() if k != "hypotheses"}
                bar.update(1)
            rows.append(row)
    if baseline is not None:
        run_of = {label: run for label, _, run in entries}
        for row in rows:
            for test_set in test_sets:
                if row["checkpoint"] == baseline:
                    continue
                row[test_set.name]["paired_bootstrap"] = paired_bootstrap(  # identical translations: not tested
                    hypotheses[baseline, test_set.name],
                    hypotheses[row["checkpoint"], test_set.name],
                    test_set.references,
                    tgt_lang=languages[run_of[row["checkpoint"]], test_set.name],
                    bleu_tokenize=config.metrics.bleu_tokenize,
                )
    return {
        "runs": [str(r) for r in runs],
        "baseline": baseline,
        "test_sets": [
            {
                "name": t.name,
                "sentences": len(t.sources),
                "references": len(t.references),
                **({"direction": t.direction} if t.direction else {}),
            }
            for t in test_sets
        ],
        "rows": rows,
        "precision": config.precision,
    }


def describe_search(search: dict) -> str:
    if search["sampling"]:
        return f"sampling (top-k {search['top_k']}, top-p {search['top_p']}, temperature {search['temperature']})"
    if search["beam"] == 1:
        return "greedy"
    return f"beam {search['beam']}, length penalty {search['length_penalty_type']} {search['length_penalty']}"


def markdown(report: dict) -> str:
    names = [t["name"] for t in report["test_sets"]]
    baseline = report.get("baseline")
    described = ", ".join(
        f"{t['name']} ({t['sentences']} sentences, {t['references']} reference{'s' if t['references'] > 1 else ''})"
        for t in report["test_sets"]
    )
    searches = sorted({describe_search(row["search"]) for row in report["rows"]})
    precision = ", under bf16 autocast" if report.get("precision") == "bf16" else ""
    header = " | ".join(
        f"{n} BLEU | {n} chrF | {n} TER" + (f" | {n} p (BLEU vs {baseline})" if baseline else "") for n in names
    )
    lines = [
        f"# Report: {', '.join(report['runs'])}",
        "",
        f"Search (each checkpoint's own): {'; '.join(searches)}{precision}. Test sets: {described}.",
        "",
        f"| checkpoint | step | val BLEU | {header} |",
        "|---|---|---|" + ("---|---|---|" + ("---|" if baseline else "")) * len(names),
    ]
    for row in report["rows"]:
        val = "" if row["val_bleu"] is None else f"{row['val_bleu']:.2f}"
        cells = []
        for n in names:
            cell = f"{row[n]['bleu']:.2f} | {row[n]['chrf']:.2f} | {row[n]['ter']:.2f}"
            if baseline:
                test = row[n].get("paired_bootstrap")
                if test is None:
                    cell += " | —"
                elif test.get("identical_to_baseline"):
                    cell += " | = baseline"
                else:
                    cell += f" | {test['bleu']['p_value']:.4f}"
            cells.append(cell)
        lines.append(f"| {row['checkpoint']} | {row['step']} | {val} | {' | '.join(cells)} |")
    directions = [t for t in report["test_sets"] if t.get("direction")]
    if len({t["direction"] for t in directions}) > 1:  # a model of several directions: BLEU by direction at a glance
        lines += [
            "",
            "BLEU by direction:",
            "",
            f"| checkpoint | {' | '.join(t['name'] for t in directions)} | mean |",
            "|---|" + "---|" * (len(directions) + 1),
        ]
        for row in report["rows"]:
            values = [row[t["name"]]["bleu"] for t in directions]
            cells = " | ".join(f"{v:.2f}" for v in values)
            lines.append(f"| {row['checkpoint']} | {cells} | {sum(values) / len(values):.2f} |")
    signatures: dict[tuple[str, str, str], list[str]] = {}  # test sets differ in references, tokenizer
    for n in names:
        scores = report["rows"][0][n]
        key = (scores["bleu_signature"], scores["chrf_signature"], scores["ter_signature"])
        signatures.setdefault(key, []).append(n)
    lines.append("")
    for (bleu, chrf, ter), sets in signatures.items():
        which = f" ({', '.join(sets)})" if len(signatures) > 1 else ""
        lines += [
            f"BLEU signature{which}: `{bleu}`",
            f"chrF signature{which}: `{chrf}`",
            f"TER signature{which}: `{ter}`",
        ]
    if baseline:
        lines.append(
            f"p: sacreBLEU's paired bootstrap resampling ({BOOTSTRAP_SAMPLES} samples) of each checkpoint against "
            f"{baseline}; below 0.05, the difference is unlikely to be chance."
        )
        if any(
            row[n].get("paired_bootstrap", {}).get("identical_to_baseline") for row in report["rows"] for n in names
        ):
            lines.append(
                f"= baseline: the same translations as {baseline}, line for line; no difference, so no test "
                "(sacreBLEU's would give them a small p-value)."
            )
    return "\n".join(lines) + "\n"


def curves(report: dict) -> dict[str, tuple[list, list]]:
    """The plot's lines: for each run and test set (``RUN · SET`` with several runs), its checkpoints' (step,
    BLEU) by step and its averaged checkpoints' apart."""
    runs = list(dict.fromkeys(row.get("run", "") for row in report["rows"]))
    found = {}
    for test_set in report["test_sets"]:
        name = test_set["name"]
        for run in runs:
            rows = [row for row in report["rows"] if row.get("run", "") == run]
            prefix = rows[0]["checkpoint"].rpartition("/")[0] if len(runs) > 1 else ""
            found[f"{prefix} · {name}" if prefix else name] = (
                sorted((row["step"], row[name]["bleu"]) for row in rows if not is_average(row["checkpoint"])),
                [(row["step"], row[name]["bleu"]) for row in rows if is_average(row["checkpoint"])],
            )
    return found


def plot(report: dict, output: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axis = plt.subplots(figsize=(7, 4), dpi=110)
    for label, (points, averaged) in curves(report).items():
        line = axis.plot(*zip(*points), marker="o", label=label)[0] if points else None
        for step, bleu in averaged:
            color = line.get_color() if line is not None else None
            axis.scatter([step], [bleu], marker="*", s=120, color=color)
    axis.set_xlabel("training step")
    axis.set_ylabel("sacreBLEU")
    axis.set_title("test BLEU of each checkpoint (★ = averaged)")
    axis.grid(alpha=0.3)
    axis.legend()
    fig.tight_layout()
    with atomic_write(output) as handle:
        fig.savefig(handle, format=Path(output).suffix.lstrip(".") or "png")
    plt.close(fig)


def write_report(report: dict, output_dir: Path) -> None:
    output_dir.mkdir(parents=True, exist_ok=True)
    with atomic_write(output_dir / "report.md") as handle:
        handle.write(markdown(report).encode("utf-8"))
    with atomic_write(output_dir / "report.json") as handle:
        handle.write((json.dumps(report, indent=2) + "\n").encode("utf-8"))
    plot(report, output_dir / "report.png")


@entry_point("report", ReportConfig)
def main(config: ReportConfig) -> None:
    set_threads(config.threads)
    output_dir = Path(config.output_dir or config.run or config.runs[0])
    if output_dir.exists() and not output_dir.is_dir():  # before decoding, not after
        raise RunError(f"output_dir={output_dir}: a file, expected a directory for report.md, .json and .png")
    refuse_unwritable_folder(output_dir / "report.md")
    report = build_report(config, set_on_command_line("search"))
    write_report(report, output_dir)
    print(json.dumps({"report": str(output_dir / "report.md"), "rows": len(report["rows"])}), flush=True)


if __name__ == "__main__":
    main()
