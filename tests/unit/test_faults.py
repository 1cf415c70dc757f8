"""Fault hooks: the in-process commit failure (the kill hooks are exercised by bench faults)."""

from __future__ import annotations

import psycopg
import pytest

from gatestream.consumers.faults import FaultHooks


def test_fail_commit_fails_the_first_n_commits_with_a_database_error_then_lets_them_through() -> None:
    hooks = FaultHooks("fail-commit:2")
    for _ in range(2):
        with pytest.raises(psycopg.OperationalError):
            hooks.hit("before-commit")
    hooks.hit("before-commit")  # the third commit goes through
    hooks.hit("after-commit")  # other points are untouched


def test_fault_specs_are_checked() -> None:
    with pytest.raises(ValueError, match="unknown fault point"):
        FaultHooks("fail-everything:1")
    with pytest.raises(ValueError, match="count of failures"):
        FaultHooks("fail-commit:0.5")
    FaultHooks("before-commit:0,fail-commit:1")  # both kinds together
