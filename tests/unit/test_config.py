"""Every config composes into its typed schema; impossible values are refused with a clear message."""

from __future__ import annotations

import pytest

from mt.cli import to_typed
from mt.config import EvaluateConfig, ReportConfig, TrainConfig, TranslateConfig, register_configs
from mt.errors import ConfigError
from tests.helpers import CONF, compose_config

register_configs()


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def values_set_by(group: str, option: str) -> dict:
    """The dotted keys (as ``leaves`` writes them, an item of a list keyed by its position) and values that
    ``conf/GROUP/OPTION.yaml`` sets, where they land in the composed config: under ``GROUP``, or at the top for
    a ``# @package _global_`` file. The files its defaults list names (another file of its group, or
    ``override /GROUP: OPTION``) come first, and the file's own values override theirs."""
    from omegaconf import OmegaConf

    path = CONF / group / f"{option}.yaml"
    values = OmegaConf.to_container(OmegaConf.load(path), resolve=True)  # ${oc.env:...} as composition reads it
    expected: dict = {}
    for entry in values.pop("defaults", []):
        if isinstance(entry, str) and entry != "_self_":
            expected |= values_set_by(group, entry)
        elif isinstance(entry, dict):
            ((key, chosen),) = entry.items()
            expected |= values_set_by(key.removeprefix("override /"), chosen)
    prefix = "" if "# @package _global_" in path.read_text() else f"{group}."
    return expected | dotted(values, prefix)


def dotted(node, prefix: str = "") -> dict:
    """``leaves``, also into lists (the corpora of a data file): their items are keyed by position."""
    if isinstance(node, list) and node:
        node = dict(enumerate(node))
    if not isinstance(node, dict) or not node:
        return {prefix: node}
    return {k: v for key, value in node.items() for k, v in dotted(value, f"{prefix}{key}.").items()}


def composed_values(config: TrainConfig, keys) -> dict:
    from omegaconf import OmegaConf

    composed = dotted(OmegaConf.to_container(OmegaConf.structured(config)))
    return {key: composed.get(key, "<missing>") for key in keys}


@pytest.mark.parametrize("data", options("data"))
@pytest.mark.parametrize("model", options("model"))
def test_every_data_and_model_composes_with_each_value_its_files_set(data, model):
    """Each value a data and a model file set (a data file: also the one it extends) arrives in the typed
    config, the command line's data.path over the file's."""
    config = to_typed(compose_config("train", [f"data={data}", f"model={model}", "data.path=/tmp/corpus"]), TrainConfig)
    expected = values_set_by("data", data) | values_set_by("model", model) | {"data.path.": "/tmp/corpus"}
    assert len(expected) > 5
    assert composed_values(config, expected) == expected


@pytest.mark.parametrize("group", ["trainer", "search", "debug"])
def test_every_trainer_search_and_debug_option_composes_with_each_value_its_file_sets(group):
    """Each value a trainer, search or debug file sets arrives in the typed config (a debug file's are global,
    and debug=smoke's model is model=tiny's)."""
    for option in options(group):
        config = to_typed(compose_config("train", [f"{group}={option}"]), TrainConfig)
        expected = values_set_by(group, option)
        assert len(expected) >= 2, option
        assert composed_values(config, expected) == expected, option


def leaves(node, prefix: str = "") -> dict:
    """The dotted keys and values of a plain nested dict."""
    if not isinstance(node, dict):
        return {prefix: node}
    return {k: v for key, value in node.items() for k, v in leaves(value, f"{prefix}{key}.").items()}


@pytest.mark.parametrize("experiment", options("experiment"))
def test_every_experiment_composes_with_each_value_its_file_sets(experiment):
    """Each value an experiment file (and the experiment it extends) sets arrives in the typed config."""
    from omegaconf import OmegaConf

    config = to_typed(compose_config("train", [f"experiment={experiment}"]), TrainConfig)
    composed = leaves(OmegaConf.to_container(OmegaConf.structured(config)))
    files, expected = [experiment], {}
    while files:  # an experiment's own defaults list may name another experiment, which it overrides
        values = OmegaConf.to_container(OmegaConf.load(CONF / "experiment" / f"{files.pop()}.yaml"))
        defaults = values.pop("defaults", [])
        expected = {**leaves(values), **expected}
        files += [d for d in defaults if isinstance(d, str) and (CONF / "experiment" / f"{d}.yaml").is_file()]
    assert expected
    assert {key: composed.get(key, "<missing>") for key in expected} == expected


def test_the_slurm_launcher_composes_into_submitits_launcher():
    from hydra import compose, initialize_config_dir

    register_configs()
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose("train", ["hydra/launcher=slurm", "hydra.launcher.partition=gpu"], return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert (launcher.partition, launcher.tasks_per_node, launcher.signal_delay_s) == ("gpu", 8, 120)


@pytest.mark.parametrize(
    ("overrides", "direction"),
    [([], "maximize"), (["validation.metric=chrf"], "maximize"), (["validation.decode=none"], "minimize")],
)
def test_the_optuna_sweeper_composes_and_its_direction_follows_the_selection_metric(overrides, direction):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    from hydra import compose, initialize_config_dir

    register_configs()
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose("train", ["hydra/sweeper=mt_optuna", *overrides], return_hydra_config=True)
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_ == "hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper"
    assert sweeper.direction == direction and sweeper.sampler.seed == cfg.seed
    assert set(sweeper.params) == {"optim.lr", "optim.warmup_steps"}


def test_defaults_and_fixed_override_order():
    config = to_typed(compose_config("train", []), TrainConfig)
    assert (config.data.name, config.data.src_lang, config.data.tgt_lang) == ("multi30k", "de", "en")
    assert config.model.d_model == 256 and config.trainer.accelerator == "cpu"
    assert config.search.beam == 5
    # debug comes last: its model override wins over the group default, and a command-line value wins over it.
    smoke = to_typed(compose_config("train", ["debug=smoke", "trainer.max_steps=7"]), TrainConfig)
    assert smoke.model.d_model == 64 and smoke.trainer.max_steps == 7


def test_multi30k_reads_mt_data_dir(monkeypatch):
    monkeypatch.setenv("MT_DATA_DIR", "/data/m30k")
    assert to_typed(compose_config("train", []), TrainConfig).data.path == "/data/m30k"
    monkeypatch.delenv("MT_DATA_DIR")
    config = to_typed(compose_config("train", []), TrainConfig)
    assert config.data.path is None and config.data.hub_name == "bentrevett/multi30k"


def test_evaluate_and_translate_compose_with_shortcuts():
    evaluate = to_typed(
        compose_config("evaluate", ["checkpoint=x.ckpt", "source=a.de", "reference=a.en", "beam=3", "output=h.en"]),
        EvaluateConfig,
    )
    assert (evaluate.beam, evaluate.search.beam, evaluate.output) == (3, 5, "h.en")
    translate = to_typed(compose_config("translate", ["checkpoint=x.ckpt", "beam=2"]), TranslateConfig)
    assert translate.beam == 2


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["model.d_model=100", "model.n_heads=3"], "not divisible"),
        (["search.beam=0"], "beam=0"),
        (["data.max_tokens=50", "data.max_len=100"], "below the longest allowed sentence"),
        (["trainer.max_time=30min"], "DD:HH:MM:SS"),
        (["trainer.precision=16"], "trainer.precision='16': expected one of 32-true, bf16-mixed, 16-mixed"),
        (["tokenizer.joint=false"], "share_all_embeddings"),
        (["data.format=xml"], "expected text, tsv or jsonl"),
        (["model.dropout=1.5"], "model.dropout"),
        (["search.sampling=true", "search.nbest=2"], "sampling draws one translation a sentence"),
        (["trainer.val_check_interval=0.5", "trainer.accumulate_grad_batches=2"], "inside an accumulation window"),
        (["trainer.log_every_n_steps=0"], "log_every_n_steps=0"),
        (["optim.betas=[0.9,1.5]"], r"optim.betas=\[0.9, 1.5\]: expected two values in \[0, 1\)"),
        (["optim.eps=-1"], "optim.eps=-1"),
        (["optim.weight_decay=-0.1"], "optim.weight_decay=-0.1"),
        (["trainer.max_steps=-5"], r"trainer.max_steps=-5: expected >= 1, or -1"),
        (["trainer.max_steps=0"], r"trainer.max_steps=0: expected >= 1"),
        (["trainer.val_check_interval=0"], r"trainer.val_check_interval=0: expected a number of batches >= 1"),
        (["trainer.val_check_interval=1.5"], r"trainer.val_check_interval=1.5: .* fraction of an epoch in \(0, 1\]"),
        (["trainer.keep_checkpoints=-1"], "trainer.keep_checkpoints=-1: expected >= 0"),
        (["trainer.early_stopping_patience=-1"], "trainer.early_stopping_patience=-1: expected >= 0"),
        (["trainer.checkpoint_every_n_steps=0"], "trainer.checkpoint_every_n_steps=0: expected >= 1"),
        (["trainer.max_epochs=0"], "trainer.max_epochs=0: expected >= 1"),
        (["seed=-1"], r"seed=-1: expected 0 <= seed < 2\*\*32"),
        (["threads=-1"], "threads=-1: expected >= 1"),
        (["data.temperature=0.0"], "data.temperature=0.0: expected a finite number > 0"),
        (["data.temperature=inf"], "data.temperature=inf: expected a finite number > 0"),
        (["data.corpora=[{weight:1},{path:/bt,weight:1e400,valid:false}]"], r"data.corpora\[1\].weight=inf: expected"),
        (['data.corpora=[{},{path:/bt,tag:"<pad>",valid:false}]'], r"data.corpora\[1\].tag='<pad>': .* SentencePiece"),
    ],
)
def test_impossible_values_are_refused(overrides, message):
    with pytest.raises(ConfigError, match=message):
        to_typed(compose_config("train", overrides), TrainConfig)


def test_wrong_types_and_unknown_keys_are_refused():
    with pytest.raises(Exception, match="d_modle"):
        compose_config("train", ["model.d_modle=3"])
    with pytest.raises(Exception, match="d_model"):
        compose_config("train", ["model.d_model=wide"])
    with pytest.raises(ConfigError, match="checkpoint"):
        to_typed(compose_config("evaluate", []), EvaluateConfig)


@pytest.mark.parametrize(
    "command,schema,overrides",
    [
        ("evaluate", EvaluateConfig, ["checkpoint=x.ckpt", "threads=0"]),
        ("translate", TranslateConfig, ["checkpoint=x.ckpt", "threads=-1"]),
    ],
)
def test_threads_below_one_are_refused_by_every_command(command, schema, overrides):
    with pytest.raises(ConfigError, match=r"threads=-?\d: expected >= 1, or null"):
        to_typed(compose_config(command, overrides), schema)


@pytest.mark.parametrize(
    "command,schema,given",
    [
        ("evaluate", EvaluateConfig, ["checkpoint=x.ckpt"]),
        ("translate", TranslateConfig, ["checkpoint=x.ckpt"]),
        ("report", ReportConfig, ["run=outputs/x"]),
    ],
)
def test_every_decoding_command_takes_32_or_bf16_and_refuses_another_precision(command, schema, given):
    assert to_typed(compose_config(command, given), schema).precision == "32"
    assert to_typed(compose_config(command, [*given, "precision=32"]), schema).precision == "32"  # an int to Hydra
    assert to_typed(compose_config(command, [*given, "precision=bf16"]), schema).precision == "bf16"
    with pytest.raises(ConfigError, match=r"precision='16-mixed': expected one of 32, bf16"):
        to_typed(compose_config(command, [*given, "precision=16-mixed"]), schema)


def test_evaluate_refuses_choices_of_the_checkpoints_data_beside_source():
    """With source= they were ignored: split=valid scored the file given, src_lang=fr a German file, without a word."""
    given = ["checkpoint=x.ckpt", "source=news.de", "reference=news.en"]
    with pytest.raises(ConfigError, match=r"^split=valid names a split of the checkpoint's data: not with source=$"):
        to_typed(compose_config("evaluate", [*given, "split=valid"]), EvaluateConfig)
    with pytest.raises(ConfigError, match=r"^src_lang=fr picks a direction of the checkpoint's test split: not with"):
        to_typed(compose_config("evaluate", [*given, "src_lang=fr"]), EvaluateConfig)
    assert to_typed(compose_config("evaluate", [*given, "tgt_lang=en"]), EvaluateConfig).tgt_lang == "en"
    assert to_typed(compose_config("evaluate", ["checkpoint=x.ckpt", "split=valid"]), EvaluateConfig).split == "valid"


def test_a_whole_float_validation_interval_is_a_number_of_batches():
    """Lightning reads val_check_interval=1000.0 as 1000 batches; so does the check of accumulation windows."""
    trainer = to_typed(compose_config("train", ["trainer.val_check_interval=1000.0"]), TrainConfig).trainer
    assert trainer.val_check_interval == 1000 and isinstance(trainer.val_check_interval, int)
    overrides = ["trainer.val_check_interval=1000.0", "trainer.accumulate_grad_batches=3"]
    with pytest.raises(ConfigError, match=r"val_check_interval=1000 \(batches\) is not a multiple of .*=3"):
        to_typed(compose_config("train", overrides), TrainConfig)


def test_init_from_and_resume_paths_expand_the_home_directory(monkeypatch):
    """A quoted "~/..." reaches mt unexpanded by the shell; data.path already expanded it, these did not."""
    monkeypatch.setenv("HOME", "/home/someone")
    config = to_typed(compose_config("train", ["init_from='~/base.ckpt'", "resume=auto"]), TrainConfig)
    assert (config.init_from, config.resume) == ("/home/someone/base.ckpt", "auto")
    config = to_typed(compose_config("train", ["resume='~/run/last.ckpt'"]), TrainConfig)
    assert config.resume == "/home/someone/run/last.ckpt"


def test_average_config_needs_either_a_list_or_a_run():
    from mt.config import AverageConfig

    listed = to_typed(compose_config("average", ["checkpoints=[a.ckpt,b.ckpt]", "output=avg.ckpt"]), AverageConfig)
    assert listed.checkpoints == ["a.ckpt", "b.ckpt"]
    with pytest.raises(ConfigError, match="either checkpoints"):
        to_typed(compose_config("average", ["output=avg.ckpt"]), AverageConfig)
    with pytest.raises(ConfigError, match="last=N"):
        to_typed(compose_config("average", ["run=outputs/x", "output=avg.ckpt"]), AverageConfig)
    with pytest.raises(ConfigError, match=r"last=3 goes with run=DIR; checkpoints=\[...\] averages exactly"):
        to_typed(compose_config("average", ["checkpoints=[a.ckpt,b.ckpt]", "last=3", "output=avg.ckpt"]), AverageConfig)


def test_a_corpus_entry_naming_one_split_keeps_the_others_from_data():
    """``data.corpora=[{splits:{test:X}}]``: its train and valid names are data.splits', not the schema's defaults
    (which once sent the corpus to train.* instead of data.splits.train's files)."""
    from mt.data.mixture import corpora

    config = to_typed(
        compose_config(
            "train",
            [
                "data=local",
                "data.path=/tmp/corpus",
                "data.splits.train=clean",
                "data.splits.valid=val",
                "data.corpora=[{name:a,splits:{test:t2017}},{name:b,valid:false}]",
            ],
        ),
        TrainConfig,
    )
    first, second = (c.data.splits for c in corpora(config.data))
    assert (first.train, first.valid, first.test) == ("clean", "val", "t2017")
    assert (second.train, second.valid, second.test) == ("clean", "val", "test")
    # The entries given are left as they were (another DataConfig built from them fills in its own names).
    from mt.config import CorpusConfig, CorpusSplits, DataConfig, SplitNames

    entry = CorpusConfig(splits=CorpusSplits(test="t2017"))
    DataConfig(name="a", path="/tmp/a", splits=SplitNames(train="clean"), corpora=[entry])
    other = DataConfig(name="b", path="/tmp/b", splits=SplitNames(train="big"), corpora=[entry])
    assert entry.splits == CorpusSplits(test="t2017") and other.corpora[0].splits.train == "big"


@pytest.mark.parametrize("experiment", options("experiment"))
def test_every_experiment_takes_debug_smoke(experiment):
    """``debug=smoke`` (20 steps, no time limit) over a recipe: its time-budgeted decay and 400 warm-up steps were
    refused, one at a time, so a smoke run of a recipe needed two overrides more."""
    config = to_typed(compose_config("train", [f"experiment={experiment}", "debug=smoke"]), TrainConfig)
    assert config.trainer.max_steps == 20 and config.optim.warmup_steps < 20
