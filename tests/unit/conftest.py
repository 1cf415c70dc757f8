"""Unit tests see no stack: the settings a shell took from `ops/stack env` (a secured broker's
user, a database URL) would otherwise reach every settings model a unit test builds, and a
test of the defaults would test the environment instead."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(autouse=True)
def _no_stack_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith(("GATESTREAM_", "PG")) and not name.startswith("GATESTREAM_TEST_"):
            monkeypatch.delenv(name)
