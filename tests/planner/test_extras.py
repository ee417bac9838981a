"""A command that needs an optional part of ftplan (an extra) says which one, in one line."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

import planner.cli.errors
from planner.cli import main


@pytest.fixture
def no_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    installed = planner.cli.errors._installed
    monkeypatch.setattr(
        planner.cli.errors, "_installed", lambda module: module != "torch" and installed(module)
    )


def test_profile_without_the_train_extra_names_it(no_torch: None) -> None:
    result = CliRunner().invoke(
        main, ["profile", "--model", "llama2-7b", "--method", "lora", "--device", "cpu"]
    )
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        "error: ftplan profile needs the 'train' extra (torch not installed): "
        "pip install 'ftplan[train]'"
    ]


def test_planning_needs_no_extra(no_torch: None) -> None:
    result = CliRunner().invoke(
        main, ["estimate", "--model", "llama2-7b", "--method", "lora", "--gpu", "h100"]
    )
    assert result.exit_code == 0, result.output


def test_a_missing_extra_is_looked_up_not_imported(monkeypatch: pytest.MonkeyPatch) -> None:
    looked_up: list[str] = []
    monkeypatch.setattr(
        planner.cli.errors, "_installed", lambda module: looked_up.append(module) or False
    )
    with pytest.raises(
        planner.cli.errors.UserInputError, match=r"pip install 'ftplan\[skypilot\]'"
    ):
        planner.cli.errors.require_extra("skypilot", "ftplan launch --target skypilot")
    assert looked_up == ["sky"]
