"""The package's shape: one import root, and layers that import one way."""

from __future__ import annotations

import ast
import functools
import os
import subprocess
from pathlib import Path

from tests.services import ROOT

PACKAGE = ROOT / "gatestream"
LIBRARY = ("producers", "consumers", "schemas")  # the design card's folders, as gatestream.<name>


@functools.cache
def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
    return out


def _sources() -> list[Path]:
    """Every module of the package, through the links to the design card's folders
    (``Path.rglob`` does not follow symbolic links to folders on Python 3.11)."""
    out: list[Path] = []
    for folder, dirs, files in os.walk(PACKAGE, followlinks=True):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        out += [Path(folder) / f for f in files if f.endswith(".py")]
    return sorted(out)


def test_the_layer_check_sees_every_module_of_the_package() -> None:
    folders = ["gatestream", *LIBRARY, "sql"]
    listed = subprocess.run(
        ["git", "ls-files", "--", *(f"{f}/*.py" for f in folders)], cwd=ROOT, capture_output=True, text=True
    )
    if listed.returncode != 0:  # not a checkout (an unpacked sdist): count the real folders instead
        tracked = {
            p.relative_to(ROOT) for f in folders for p in (ROOT / f).rglob("*.py") if "__pycache__" not in p.parts
        }
    else:
        tracked = {Path(line) for line in listed.stdout.splitlines()}
    seen = {p.relative_to(PACKAGE) for p in _sources()}
    # gatestream/<name>/... is <name>/... in the checkout (the links); gatestream's own files keep their prefix
    as_checkout = {Path(*r.parts) if r.parts[0] in (*LIBRARY, "sql") else Path("gatestream", *r.parts) for r in seen}
    assert tracked <= as_checkout, f"the layer check misses {sorted(map(str, tracked - as_checkout))}"
    for layer in LIBRARY:
        assert any(r.parts[0] == layer for r in seen), f"no module of {layer} checked"
    assert len(seen) >= 60, f"only {len(seen)} modules checked"


def test_one_import_root_and_layers_that_import_one_way() -> None:
    for path in [*_sources(), *(ROOT / "tests").rglob("*.py")]:
        for name in _imports(path):
            top = name.split(".")[0]
            assert top not in LIBRARY, f"{path}: imports {name}; use gatestream.{name}"
    # layers, importing one way: core <- schemas <- producers <- consumers <- the command line
    apps = (
        "gatestream.cli", "gatestream.bench", "gatestream.bench_members", "gatestream.faultbench",
        "gatestream.status", "gatestream.report", "gatestream.kafka_acls", "gatestream.__main__",
    )  # fmt: skip
    forbidden = {
        "core": ("gatestream.schemas", "gatestream.producers", "gatestream.consumers", *apps),
        "schemas": ("gatestream.producers", "gatestream.consumers", *apps),
        "producers": ("gatestream.consumers", *apps),
        "consumers": apps,
        "legacy": apps,  # the legacy import writes through the consumers' BatchWriter
    }
    for path in _sources():
        rel = path.relative_to(PACKAGE)
        layer = rel.parts[0] if len(rel.parts) > 1 else ("app" if f"gatestream.{rel.stem}".startswith(apps) else "core")
        if layer in ("cli", "app", "sql", "benches"):  # benches: applications, like bench
            continue
        bad = {n for n in _imports(path) if n.startswith(forbidden[layer])}
        assert not bad, f"{rel} ({layer}) imports a layer above it: {bad}"


def test_the_image_installs_only_the_wheel_and_compose_runs_valid_commands() -> None:
    import yaml

    from gatestream.cli import build_parser

    stages = (ROOT / "Dockerfile").read_text().split("\nFROM ")
    final = [line for line in stages[-1].splitlines() if line.startswith(("COPY", "ADD"))]
    assert final and all("--from=wheel" in line for line in final), "no source tree in the final image"
    assert "pip install" in stages[-1] and ".whl" in stages[-1]
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    pipeline = {"ingest-1", "ingest-2", "policy-consumer", "db-exporter", "setup"}
    assert pipeline <= services.keys()
    parser = build_parser()
    for name in pipeline:
        svc = services[name]
        assert svc["image"] == "gatestream:local" and svc["build"] == "."
        parser.parse_args(svc["command"])  # a command gatestream knows, with valid flags
