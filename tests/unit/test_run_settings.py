"""The run-settings table: every RunConfig field is declared once and settable from the CLI; validation comes
from the same declarations."""
from __future__ import annotations

import json
from dataclasses import fields

import pytest

from engine.cli.main import build_parser
from engine.cli.options import config_from_args
from engine.config import BY_NAME, SETTINGS, RunConfig, check_value, default
from engine.errors import UserError

# A non-default, valid value for every field, written as a user would type it on the command line.
CLI_VALUES = {
    "dataset_id": ("--dataset", "ds-1", "ds-1"), "arch": ("--arch", "unet", "unet"),
    "task": ("--task", "segmentation", "segmentation"), "name": ("--name", "  my run ", "my run"),
    "pretrained": ("--pretrained", "imagenet", "imagenet"), "freeze_backbone": ("--freeze-backbone", None, True),
    "model_options": ("--model-options", '{"depth": 3}', {"depth": 3}),
    "augment": ("--augment", "hflip,rotate", ["hflip", "rotate"]),
    "augment_params": ("--augment-params", '{"rotate": {"degrees": 10}}', {"rotate": {"degrees": 10}}),
    "loss": ("--loss", "dice", "dice"), "class_weights": ("--class-weights", None, True),
    "optimizer": ("--optimizer", "sgd", "sgd"), "lr": ("--lr", "0.01", 0.01),
    "momentum": ("--momentum", "0.8", 0.8), "weight_decay": ("--weight-decay", "0.0001", 1e-4),
    "schedule": ("--schedule", "step", "step"), "decay_rate": ("--decay-rate", "0.95", 0.95),
    "decay_steps": ("--decay-steps", "50", 50), "step_size": ("--step-size", "3", 3),
    "gamma": ("--gamma", "0.5", 0.5), "epochs": ("--epochs", "3", 3), "batch_size": ("--batch-size", "4", 4),
    "image_size": ("--image-size", "64", 64), "early_stopping": ("--early-stopping", "2", 2),
    "monitor": ("--monitor", "iou", "iou"), "seed": ("--seed", "7", 7), "device": ("--device", "cpu", "cpu"),
    "devices": ("--devices", "2", 2),
    "amp": ("--no-amp", None, False), "preview_samples": ("--preview-samples", "2", 2),
    "folds": ("--folds", "5", 5), "fold": ("--fold", "2", 2),
    "train_fraction": ("--train-fraction", "0.25", 0.25),
    "time_limit_minutes": ("--time-limit-minutes", "2.5", 2.5),
}

# Set by --preset NAME [--budget-minutes N], which reads an ingested dataset: tests/unit/test_auto_preset.py
PRESET_FIELDS = ("preset",)


def test_every_field_has_a_setting_with_label_and_help():
    assert [s.name for s in SETTINGS] == [f.name for f in fields(RunConfig)]
    for s in SETTINGS:
        assert s.label and s.help.endswith((".", ")")), s.name
        assert s.kind in ("int", "float", "bool", "str", "list", "dict"), s.name


@pytest.mark.parametrize("command", ["train", "submit"])
def test_every_field_is_settable_from_the_cli(command):
    """The README says everything the UI does can be scripted: each RunConfig field has a flag."""
    assert sorted([*CLI_VALUES, *PRESET_FIELDS]) == sorted(BY_NAME), "add the new field to CLI_VALUES"
    argv = [command]
    for flag, text, _ in CLI_VALUES.values():
        argv += [flag] if text is None else [flag, text]
    config = config_from_args(build_parser(command).parse_args(argv))
    for name, (_, _, expected) in CLI_VALUES.items():
        assert getattr(config, name) == expected, name
        assert expected != default(name), f"{name}: pick a non-default value so the test can fail"


def test_unset_flags_keep_the_one_default():
    config = config_from_args(build_parser("train").parse_args(["train", "--dataset", "d"]))
    assert config.to_dict() == RunConfig(dataset_id="d").to_dict()


def test_cli_refuses_a_malformed_json_setting(capsys):
    with pytest.raises(SystemExit):
        build_parser("train").parse_args(["train", "--dataset", "d", "--model-options", "depth=3"])
    assert "JSON object" in capsys.readouterr().err


@pytest.mark.parametrize("name,value,message", [
    ("lr", 5.0, "Learning rate must be between"), ("epochs", 0, "Epochs must be between"),
    ("batch_size", 2.5, "whole number"), ("optimizer", "rmsprop", "must be one of adam, adamw, sgd"),
    ("amp", "yes", "on or off"), ("image_size", float("nan"), "must be a number"),
    ("augment", "hflip", "list of names"),
])
def test_validation_comes_from_the_table(name, value, message):
    with pytest.raises(UserError, match=message):
        check_value(BY_NAME[name], value)
    with pytest.raises(UserError, match=message):
        RunConfig(dataset_id="d", task="classification", **{name: value}).validate()


def test_a_batch_of_one_is_refused_with_the_reason():
    # a step of one image cannot train a network with batch normalisation: the Trainer skipped every batch
    with pytest.raises(UserError, match="at least 2: batch normalisation"):
        RunConfig(dataset_id="d", task="classification", batch_size=1).validate()
    RunConfig(dataset_id="d", task="classification", batch_size=2).validate()


def test_monitor_must_be_measured_for_the_task():
    with pytest.raises(UserError, match="not measured for classification"):
        RunConfig(dataset_id="d", task="classification", monitor="dice").validate()
    RunConfig(dataset_id="d", task="segmentation", monitor="loss").validate()


def test_json_round_trip_keeps_every_field():
    config = RunConfig(dataset_id="d", task="segmentation", model_options={"depth": 3}, augment=["hflip"])
    assert RunConfig.from_json(config.to_json()).to_dict() == config.to_dict()
    assert json.loads(config.to_json())["model_options"] == {"depth": 3}
