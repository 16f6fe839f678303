"""The CLI from one source of truth: the ``train`` / ``demo`` options are generated from
TrainConfig's fields (adding a field needs no CLI edit), every help shows its default, ``--config
FILE`` reads the same names, ``--resume`` passes on only what was typed; global options work
after the command and an unknown option is reported with the command's own usage."""

from __future__ import annotations

import json
import re
import typing
from dataclasses import fields

import pytest

from pixelwise.cli import main
from pixelwise.cli.options import cli_fields, given_options
from pixelwise.cli.parser import build_parser
from pixelwise.cli.train import DEMO_DEFAULTS, train_config
from pixelwise.errors import ConfigError
from pixelwise.training import TrainConfig
from pixelwise.training.config import field_default, option_flag, resume_free_fields

#: option text for the fields whose metadata names a ``parse`` function, and the value it gives
PARSED_SAMPLES = {"class_weights": ("1,2.5", [1.0, 2.5]), "budget": ("1.5h", 5400.0)}


def _sample(f) -> tuple[list[str], dict]:
    """Command-line words that set field ``f`` to something other than its default, and the
    ``{field: value}`` they should give."""
    flag, default, meta = option_flag(f.name), field_default(f.name), f.metadata
    if isinstance(default, bool):
        return [flag], {f.name: not default}
    if isinstance(default, dict):
        return [flag, "some_key=3", flag, "other=[1, 2]"], {
            f.name: {"some_key": 3, "other": [1, 2]}
        }
    if "pair" in meta:
        return [flag, "0.5", "2"], {f.name: 0.5, meta["pair"]: 2.0}
    if "parse" in meta:
        assert f.name in PARSED_SAMPLES, f"add a sample text for {f.name} to PARSED_SAMPLES"
        text, value = PARSED_SAMPLES[f.name]
        return [flag, text], {f.name: value}
    if "choices" in meta:
        choice = [c for c in meta["choices"] if c != default][-1]
        return [flag, str(choice)], {f.name: choice}
    hint = typing.get_type_hints(TrainConfig)[f.name]
    kind = next(k for k in (typing.get_args(hint) or (hint,)) if k is not type(None))
    value = {int: 3, float: 0.25, str: "some-text"}[kind]
    return [flag, str(value)], {f.name: value}


@pytest.mark.parametrize("f", cli_fields(), ids=lambda f: f.name)
def test_every_field_has_an_option_that_sets_it(f):
    words, expected = _sample(f)
    args = build_parser().parse_args(["train", *words])
    given = given_options(args)
    assert given == expected
    config = TrainConfig.from_dict(given)  # the right types for the field
    for name, value in expected.items():
        assert getattr(config, name) == value


def test_the_fields_without_an_option_are_the_ones_marked_so():
    without = {f.name for f in fields(TrainConfig)} - {f.name for f in cli_fields()}
    assert without == {f.name for f in fields(TrainConfig) if f.metadata.get("cli") is False}
    assert "scale_max" in without  # set by --scale's second value
    assert given_options(build_parser().parse_args(["train"])) == {}  # nothing typed: nothing


@pytest.mark.parametrize("f", cli_fields(demo=True), ids=lambda f: f.name)
def test_demo_has_the_demo_fields(f):
    words, expected = _sample(f)
    assert given_options(build_parser().parse_args(["demo", *words]), demo=True) == expected


def test_demo_refuses_the_other_fields_with_its_usage(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["demo", "--model", "fcn8s"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2
    assert "usage: pixelwise demo" in err and "unrecognized arguments: --model fcn8s" in err


def _help(monkeypatch, capsys, *command: str) -> str:
    monkeypatch.setenv("COLUMNS", "2000")  # one line per option: no wrapping
    with pytest.raises(SystemExit):
        main([*command, "--help"])
    return capsys.readouterr().out


def _option_line(text: str, flag: str) -> str:
    """The help entry of ``flag`` on one line (a long option has its text on the next lines)."""
    lines = [line.strip() for line in text.splitlines()]
    starts = [i for i, line in enumerate(lines) if line.startswith((flag + " ", flag + ","))]
    assert len(starts) == 1, (flag, starts)
    entry = [lines[starts[0]]]
    for line in lines[starts[0] + 1 :]:
        if not line or line.startswith("-"):
            break
        entry.append(line)
    return " ".join(entry)


def test_help_shows_the_defaults(monkeypatch, capsys):
    text = _help(monkeypatch, capsys, "train")
    for flag, shown in [
        ("--epochs", "10"),
        ("--batch-size", "8"),
        ("--lr", "0.01"),
        ("--val-fraction", "0.1"),
        ("--weight-decay", "0.0005"),
        ("--scale", "0.75 1.25"),
        ("--out", "runs/latest"),
    ]:
        assert f"(default: {shown})" in _option_line(text, flag)
    for f in cli_fields():  # every option that is not a flag says its default
        if not isinstance(field_default(f.name), bool):
            assert "default:" in _option_line(text, option_flag(f.name)), f.name


def test_demo_help_shows_the_demo_defaults(monkeypatch, capsys):
    text = _help(monkeypatch, capsys, "demo")
    assert f"(default: {DEMO_DEFAULTS['lr']:g})" in _option_line(text, "--lr")
    assert "(default: runs/demo)" in _option_line(text, "--out")


@pytest.mark.parametrize(
    ("command", "flag", "shown"),
    [
        (["heatmap"], "--seed", "0"),
        (["heatmap"], "--epochs", "6"),
        (["export"], "--format", "onnx"),
        (["export"], "--checkpoint", "best"),
        (["evaluate"], "--split", "val"),
        (["evaluate"], "--device", "auto"),
        (["predict"], "--overlap", "0.25"),
        (["serve"], "--port", "8000"),
        (["data", "weights"], "--sigma", "5"),
    ],
)
def test_other_commands_show_their_defaults(monkeypatch, capsys, command, flag, shown):
    assert f"(default: {shown})" in _option_line(_help(monkeypatch, capsys, *command), flag)


def test_resume_help_lists_the_resume_free_options(monkeypatch, capsys):
    line = _option_line(_help(monkeypatch, capsys, "train"), "--resume")
    for name in resume_free_fields():
        assert option_flag(name) in line, name


# --- global options, unknown options ----------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["-q", "train", "--debug"],
        ["train", "-q", "--debug"],
        ["--debug", "train", "--quiet"],
        ["train", "--epochs", "2", "--quiet", "--debug"],
    ],
)
def test_global_options_before_or_after_the_command(argv):
    args = build_parser().parse_args(argv)
    assert args.quiet is True and args.debug is True and args.command == "train"


def test_global_options_default_off_after_any_command():
    for argv in (["train"], ["models"], ["data", "check", "DIR"], ["evaluate", "RUN"]):
        args = build_parser().parse_args(argv)
        assert args.quiet is False and args.debug is False, argv


def test_debug_after_the_command_shows_the_traceback(tmp_path, capsys):
    code = main(["train", "--lr", "-3", "--out", str(tmp_path / "r")])
    assert code == 2 and "--lr" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="--lr"):
        main(["train", "--lr", "-3", "--out", str(tmp_path / "r"), "--debug"])


@pytest.mark.parametrize(
    ("argv", "usage"),
    [
        (["train", "--epochs", "2", "--bogus"], "usage: pixelwise train"),
        (["-q", "train", "--learning-rate", "1"], "usage: pixelwise train"),
        (["data", "check", "DIR", "--bogus"], "usage: pixelwise data check"),
        (["evaluate", "RUN", "--bogus"], "usage: pixelwise evaluate"),
        (["--bogus"], "usage: pixelwise [-h]"),
    ],
)
def test_unknown_option_shows_the_commands_usage(capsys, argv, usage):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2
    assert err.startswith(usage), err
    assert "error: unrecognized arguments: " in err and "Traceback" not in err


# --- --config FILE ----------------------------------------------------------------------------


def _config(argv: list[str]) -> TrainConfig:
    return train_config(build_parser().parse_args(["train", *argv]))


def test_config_file_toml_then_the_command_line(tmp_path):
    path = tmp_path / "exp.toml"
    path.write_text(
        'model = "unet_same"\nepochs = 3\nhflip = false\nscale_min = 0.5\n'
        "[optimisation]\nlr = 0.02\nbatch_size = 4\n"
        "[data_args]\nlimit = 20\nnum_images = 16\n"
    )
    config = _config(["--config", str(path)])
    assert (config.model, config.epochs, config.lr, config.batch_size) == ("unet_same", 3, 0.02, 4)
    assert config.hflip is False and config.scale_min == 0.5
    assert config.data_args == {"limit": 20, "num_images": 16}
    assert config.momentum == field_default("momentum")  # not in the file: the default
    config = _config(["--config", str(path), "--lr", "0.5", "--data-arg", "limit=5"])
    assert config.lr == 0.5 and config.epochs == 3  # the command line wins, the rest stays
    assert config.data_args == {"limit": 5, "num_images": 16}  # KEY=VALUE merged into the file's


def test_config_file_json(tmp_path):
    path = tmp_path / "exp.json"
    path.write_text(json.dumps({"crop_size": 48, "class_weights": [1, 2], "device": "cpu"}))
    config = _config(["--config", str(path), "--seed", "4"])
    assert (config.crop_size, config.class_weights, config.seed) == (48, [1.0, 2.0], 4)


def test_config_file_a_runs_own_config_json(run_dir, tmp_path):
    recorded = json.loads((run_dir / "config.json").read_text())["train"]
    config = _config(["--config", str(run_dir / "config.json"), "--out", str(tmp_path / "again")])
    assert config.model_args == recorded["model_args"] and config.crop_size == 32
    assert config.out == str(tmp_path / "again") and config.overwrite is False


@pytest.mark.parametrize(
    ("text", "needles"),
    [
        ("epochs = 2\nlearning_rate = 0.1\n", ["unknown training option(s): learning_rate"]),
        ('epochs = "ten"\n', ["--epochs", "'ten'"]),
        ("epochs = [\n", ["unreadable"]),
    ],
)
def test_config_file_errors_are_one_line_naming_the_file(tmp_path, capsys, text, needles):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    code = main(["train", "--config", str(path), "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert str(path) in err, err
    for needle in needles:
        assert needle in err, err
    assert not (tmp_path / "r").exists()


def test_config_file_missing(tmp_path, capsys):
    assert main(["train", "--config", str(tmp_path / "none.toml")]) == 2
    assert "none.toml: no such file" in capsys.readouterr().err


# --- --resume, --threads ----------------------------------------------------------------------


def test_resume_passes_on_only_the_options_typed(monkeypatch, capsys):
    import pixelwise.training

    seen = []

    def fake_resume_config(run, overrides):
        seen.append((run, overrides))
        raise ConfigError("stop here")

    monkeypatch.setattr(pixelwise.training, "resume_config", fake_resume_config)
    argv = ["train", "--resume", "R", "--epochs", "5", "--threads", "2", "--no-check"]
    assert main(argv) == 2
    assert seen == [("R", {"epochs": 5, "threads": 2, "check_data": False})]
    assert main(["-q", "train", "--resume", "R"]) == 2
    assert seen[-1] == ("R", {})
    assert "stop here" in capsys.readouterr().err


def test_threads_is_a_training_option_for_train(monkeypatch, tmp_path, capsys):
    import torch

    calls = []
    monkeypatch.setattr(torch, "set_num_threads", calls.append)
    assert _config(["--threads", "3"]).threads == 3
    code = main(["train", "--threads", "0", "--out", str(tmp_path / "r")])
    assert code == 2 and "--threads: must be at least 1" in capsys.readouterr().err
    assert calls == []  # training applies it, not the CLI
    code = main(["evaluate", str(tmp_path / "none"), "--threads", "0"])
    assert code == 2 and "--threads: must be at least 1" in capsys.readouterr().err


# --- pixelwise models -------------------------------------------------------------------------


def test_models_prints_one_line_per_model(capsys):
    from pixelwise.models import available

    assert main(["models"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split()[0] for line in lines] == available()
    by_name = {line.split()[0]: line for line in lines}
    assert re.search(r" 134\.\dM params ", by_name["fcn8s"]), by_name["fcn8s"]
    assert re.search(r" 31\.0M params ", by_name["unet"]), by_name["unet"]
    for line in lines:
        assert re.search(r"\d(\.\d)?[kM] params  \S", line), line  # a count and a description
    assert "(Long, Shelhamer & Darrell 2015)" in by_name["fcn8s"]  # the paper
    assert "(Ronneberger, Fischer & Brox 2015)" in by_name["unet"]
