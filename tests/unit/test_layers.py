"""Each package's modules in layers: a module imports (at the top or inside a function) only
modules of lower layers, so no circle hides behind a function-local import."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2] / "packages"

# lowest first; modules of one layer do not import each other
LAYERS = {
    "circuit-qos/src/circuit_qos": [
        {"units", "devices", "refused", "shape"},
        {"tc"},  # pyroute2's path
        {"plan"},  # the kept plan's path (tc only to encode one)
        {"policy"},
        {"extension", "doctor"},
        {"cli", "metrics"},
    ],
    "circuit-lb/src/circuit_lb": [
        {"address"},
        {"ipvs", "table", "vip", "health"},
        {"ipvs_netlink", "nft"},
        {"backends"},
        {"services"},
        {"agent", "doctor"},
        {"cli", "metrics"},
        {"extension"},
    ],
}


def own_imports(path: Path) -> set[str]:
    """The package's own modules path imports, wherever in the file."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            if node.module:
                found.add(node.module.split(".")[0])
            else:
                found.update(alias.name for alias in node.names)
    return found


@pytest.mark.unit
@pytest.mark.parametrize("package", sorted(LAYERS))
def test_modules_import_only_lower_layers(package):
    layers = LAYERS[package]
    rank = {module: i for i, layer in enumerate(layers) for module in layer}
    modules = {p.stem for p in (ROOT / package).glob("*.py")} - {"__init__"}
    assert modules == set(rank), "every module has a layer"
    upward = [(m, imported) for m in sorted(modules)
              for imported in sorted(own_imports(ROOT / package / f"{m}.py"))
              if rank[imported] >= rank[m]]
    assert upward == []
