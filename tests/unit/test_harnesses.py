"""Harnesses beside the product: the wheel needs nothing of the checkout, and the fault
bench, which drives the checkout's ops/ scripts, runs from the checkout (bench/)."""

from __future__ import annotations

import ast
import os
from pathlib import Path

import pytest

from tests.services import ROOT

CHECKOUT_ONLY = ("bench", "tests", "ops")  # top-level folders of the checkout that the wheel does not ship


def _package_sources() -> list[Path]:
    """Every module of the package, through the links to consumers/, producers/ and schemas/."""
    out: list[Path] = []
    for folder, dirs, files in os.walk(ROOT / "gatestream", followlinks=True):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        out += [Path(folder) / f for f in files if f.endswith(".py")]
    return out


def _checkout_references(path: Path) -> list[str]:
    """Imports of checkout-only packages, and paths into ops/ or a fixed PostgreSQL install."""
    found: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        found += [f"import {n}" for n in names if n.split(".")[0] in CHECKOUT_ONLY]
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            v = node.value
            if v == "ops" or v.startswith("ops/") or "/usr/lib/postgresql" in v:
                found.append(repr(v))
    return found


def test_the_package_needs_nothing_from_the_checkout() -> None:
    sources = _package_sources()
    folders = {p.relative_to(ROOT / "gatestream").parts[0] for p in sources}
    assert {"consumers", "producers", "schemas", "cli"} <= folders, folders
    assert len(sources) > 50, f"walked only {len(sources)} modules"
    bad = {str(p.relative_to(ROOT)): refs for p in sources if (refs := _checkout_references(p))}
    assert bad == {}, "the wheel would reach into a checkout it does not have"


def test_gatestream_bench_faults_says_where_the_fault_bench_is(capsys: pytest.CaptureFixture[str]) -> None:
    from gatestream.cli import build_parser

    for argv in (["bench", "faults"], ["bench", "faults", "--short", "--rounds", "3"], ["bench", "faults", "--help"]):
        args = build_parser().parse_args(argv)
        assert args.fn(args) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "python -m bench.faults" in err[0], err


def test_the_fault_bench_runs_from_the_checkout(capsys: pytest.CaptureFixture[str]) -> None:
    from bench.faults import main

    with pytest.raises(SystemExit) as done:
        main(["--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert "--short" in out and "broker-kill-9" in out
    assert main(["--scenarios", "no-such"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown scenarios ['no-such']" in err
