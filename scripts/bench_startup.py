"""Cold start of ``mt.translate``: process start to the first line of output, for a tiny checkpoint.

Each round starts ``python -m mt.translate checkpoint=CKPT`` once per source tree, in alternating
order, writes one sentence to its stdin and times the wall clock from the process start to its first
line on stdout (the model load, imports and one decode: what a user waits for). Several trees can be
compared in one run, e.g. the code before and after a change checked out with ``git worktree``:

    python scripts/bench_startup.py                                  # this tree only
    git worktree add /tmp/mt_before HEAD~5
    python scripts/bench_startup.py --tree /tmp/mt_before --tree .   # before and after, one run

The checkpoint is trained once with ``mt.train`` (``model=tiny``, 20 steps) on a toy corpus this
script writes, in ``--work`` (default: a temporary directory). Reports the median (min-max) per tree,
the ratio of each tree to the first within each round, and which modules each tree's process imported
(Lightning, mt's training code) as a check on what the time buys.

A tree is put first on the child's ``PYTHONPATH``, but ``mt`` is a namespace package, and an installed ``mt``
(an editable install of another checkout) fills in any module the tree lacks. So a tree must hold
``mt/translate.py``, and every ``mt`` module a timed process imported must come from its tree: otherwise the
script stops, naming the module and where it came from.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORDS = "der die das hund katze mann frau kind ball haus baum sieht hat mag sucht rot gross klein alt".split()


def toy_corpus(directory: Path) -> Path:
    rng = random.Random(0)
    directory.mkdir(parents=True, exist_ok=True)
    for split, count in (("train", 2000), ("valid", 50), ("test", 50)):
        for lang in ("de", "en"):
            lines = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12))) for _ in range(count)]
            (directory / f"{split}.{lang}").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return directory


def make_checkpoint(work: Path) -> Path:
    run_dir = work / "run"
    checkpoint = run_dir / "checkpoints" / "last.ckpt"
    if checkpoint.is_file():
        return checkpoint
    data = toy_corpus(work / "data")
    command = [
        sys.executable, "-m", "mt.train", "debug=smoke", "data=local", f"data.path={data}", "tokenizer.vocab_size=200",
        "trainer.enable_progress_bar=false", "test_after_training=false", f"hydra.run.dir={run_dir}",
    ]  # fmt: skip
    subprocess.run(command, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    return checkpoint


PROBE = """\
import atexit, importlib.util, sys

def report():
    import json
    probed = ("lightning", "mt.module", "mt.training", "mt.training.module")
    sys.stderr.write("\\nMODULES " + " ".join(m for m in probed if m in sys.modules) + "\\n")
    files = {n: getattr(m, "__file__", None) for n, m in list(sys.modules.items()) if n.split(".")[0] == "mt"}
    files["mt.translate"] = translate  # run as __main__, so not in sys.modules under its name
    sys.stderr.write("MT_FILES " + json.dumps({n: f for n, f in files.items() if f}) + "\\n")

translate = importlib.util.find_spec("mt.translate").origin
atexit.register(report)
import runpy; sys.argv = ["mt.translate"] + sys.argv[1:]; runpy.run_module("mt.translate", run_name="__main__")
"""


def foreign_modules(tree: Path, files: dict[str, str]) -> list[tuple[str, str]]:
    """The ``(module, file)`` pairs whose file lies outside ``tree`` (namespace packages have no file)."""
    tree = tree.resolve()
    return [(name, path) for name, path in sorted(files.items()) if not Path(path).resolve().is_relative_to(tree)]


def cold_start(tree: Path, checkpoint: Path) -> tuple[float, str]:
    """Seconds from process start to the first output line, and the probed modules; stops when an ``mt`` module
    the process imported lies outside ``tree``."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    start = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-c", PROBE, f"checkpoint={checkpoint}", "hydra.output_subdir=null", "hydra.run.dir=."],
        cwd=tree,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    process.stdin.write("der hund sieht die katze\n")
    process.stdin.flush()
    process.stdin.close()
    process.stdout.readline()
    elapsed = time.perf_counter() - start
    process.stdout.read()
    stderr = process.stderr.read()
    if process.wait() != 0:
        raise SystemExit(f"{tree}: mt.translate failed:\n{stderr[-2000:]}")
    if "\nMT_FILES " not in stderr:
        raise SystemExit(f"{tree}: the probe did not report which mt modules it imported")
    modules, files = stderr.rsplit("\nMODULES ", 1)[-1].split("\nMT_FILES ", 1)
    foreign = foreign_modules(tree, json.loads(files.splitlines()[0]))
    if foreign:
        name, path = foreign[0]
        more = f" (and {len(foreign) - 1} more)" if len(foreign) > 1 else ""
        raise SystemExit(f"{tree}: {name} was imported from {path}, outside this tree{more}")
    return elapsed, modules.strip() or "-"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tree", action="append", type=Path, help="a source tree to time (repeatable); default: this")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--work", type=Path, default=None, help="where the toy corpus and checkpoint go")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error(f"--rounds {args.rounds}: expected >= 1")
    trees = [tree.resolve() for tree in (args.tree or [ROOT])]
    for tree in trees:
        if not tree.is_dir():
            parser.error(f"--tree {tree}: no such directory")
        if not (tree / "mt" / "translate.py").is_file():
            parser.error(f"--tree {tree}: no mt/translate.py there (not an mt source tree)")
    work = args.work or Path(tempfile.mkdtemp(prefix="bench_startup_"))
    checkpoint = make_checkpoint(work)
    times: dict[Path, list[float]] = {tree: [] for tree in trees}
    modules: dict[Path, str] = {}
    ratios: dict[Path, list[float]] = {tree: [] for tree in trees[1:]}
    for tree in trees:  # warm the file cache once per tree, not timed
        cold_start(tree, checkpoint)
    for round_index in range(args.rounds):
        order = trees if round_index % 2 == 0 else trees[::-1]
        measured = {}
        for tree in order:
            measured[tree], modules[tree] = cold_start(tree, checkpoint)
            times[tree].append(measured[tree])
        for tree in trees[1:]:
            ratios[tree].append(measured[trees[0]] / measured[tree])
    print(f"mt.translate cold start, {args.rounds} rounds, checkpoint {checkpoint} ({checkpoint.stat().st_size} bytes)")
    print(f"{'tree':<40} {'median s':>9} {'min-max s':>13} {'speed-up vs first':>18}  imported")
    for tree in trees:
        values = times[tree]
        ratio = ""
        if tree in ratios:
            r = ratios[tree]
            ratio = f"{statistics.median(r):.2f} ({min(r):.2f}-{max(r):.2f})"
        spread = f"{min(values):.2f}-{max(values):.2f}"
        print(f"{str(tree):<40} {statistics.median(values):>9.2f} {spread:>13} {ratio:>18}  {modules[tree]}")


if __name__ == "__main__":
    main()
