"""The package's shape: one import root, and layers that import one way."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.services import ROOT

PACKAGE = ROOT / "gatestream"
LIBRARY = ("producers", "consumers", "schemas")  # the design card's folders, as gatestream.<name>


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
    return [p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts]


def test_one_import_root_and_layers_that_import_one_way() -> None:
    for path in [*_sources(), *(ROOT / "tests").rglob("*.py")]:
        for name in _imports(path):
            top = name.split(".")[0]
            assert top not in LIBRARY, f"{path}: imports {name}; use gatestream.{name}"
    # layers, importing one way: core <- producers / consumers <- the command line
    apps = (
        "gatestream.cli", "gatestream.bench", "gatestream.faultbench", "gatestream.status", "gatestream.report",
        "gatestream.__main__",
    )  # fmt: skip
    forbidden = {
        "core": ("gatestream.producers", "gatestream.consumers", *apps),
        "schemas": ("gatestream.producers", "gatestream.consumers", *apps),
        "producers": ("gatestream.consumers", *apps),
        "consumers": apps,
    }
    for path in _sources():
        rel = path.relative_to(PACKAGE)
        layer = rel.parts[0] if len(rel.parts) > 1 else ("app" if f"gatestream.{rel.stem}" in apps else "core")
        if layer in ("cli", "app", "sql"):
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
