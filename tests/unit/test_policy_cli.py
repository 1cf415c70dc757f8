"""The policy commands' refusals: one line on stderr and exit 1, never a traceback."""

from __future__ import annotations

import argparse

import pytest

from gatestream.cli.policy import _one_line
from gatestream.consumers.policy.engines import EngineUnavailable
from gatestream.consumers.policy.model import PolicyError


@pytest.mark.parametrize(
    ("error", "args", "said"),
    [
        (EngineUnavailable("run db migrate"), {"command": "policy", "policy_command": "plan"}, "policy plan"),
        (PolicyError("cannot be reconciled"), {"command": "policy-consumer"}, "policy-consumer"),
    ],
)
def test_a_refusal_of_the_policy_engine_is_one_line(
    error: Exception, args: dict[str, str], said: str, capsys: pytest.CaptureFixture[str]
) -> None:
    def command(_: argparse.Namespace) -> int:
        raise error

    assert _one_line(command)(argparse.Namespace(**args)) == 1
    err = capsys.readouterr().err
    assert err == f"gatestream {said}: {error}\n"


def test_other_errors_are_not_swallowed() -> None:
    def command(_: argparse.Namespace) -> int:
        raise ValueError("a bug")

    with pytest.raises(ValueError, match="a bug"):
        _one_line(command)(argparse.Namespace(command="policy", policy_command="plan"))
