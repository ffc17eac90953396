"""Layers: circuit's packages as docs/architecture.md draws them (each imports and declares only
packages below it), and each package's modules (a module imports, at the top or inside a
function, only modules of lower layers, so no circle hides behind a function-local import)."""

import ast
import re
import tomllib
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


# circuit's packages in the layers of docs/architecture.md's diagram (distribution names)
PACKAGE_LAYERS = [
    {"circuit-common"},
    {"circuit-netlink"},
    {"circuit-net"},
    {"circuit-hook", "circuit-qos", "circuit-lb", "circuit-cluster", "circuit-dns",
     "circuit-metrics"},
    {"circuit-dispatch"},
]
DIAGRAM_GROUPS = {  # group: the tools that fill it, as the diagram names them
    "circuit.extensions": {"circuit-qos", "circuit-lb", "circuit-dns", "circuit-net"},
    "circuit.state_backends": {"circuit-cluster"},
    "circuit.doctor": {"circuit-net", "circuit-qos", "circuit-lb", "circuit-cluster"},
    "circuit.record_checks": {"circuit-net", "circuit-qos", "circuit-lb", "circuit-common"},
    "circuit.metrics": {"circuit-net", "circuit-qos", "circuit-lb"},
}


def projects() -> dict[str, dict]:
    """Each workspace package's pyproject, by distribution name."""
    found = {}
    for path in ROOT.glob("*/pyproject.toml"):
        project = tomllib.loads(path.read_text())["project"]
        found[project["name"]] = {**project, "dir": path.parent}
    return found


def circuit_imports(source: Path) -> set[str]:
    """The circuit_* packages a module imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(source.read_text())):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
            [node.module] if isinstance(node, ast.ImportFrom) and not node.level else []
        found |= {n.split(".")[0] for n in names if n and n.startswith("circuit_")}
    return found


def requirement_name(requirement: str) -> str:
    return re.match(r"[A-Za-z0-9_.-]+", requirement).group(0)


@pytest.mark.unit
def test_the_layer_diagram_is_the_packages_layers():
    """docs/architecture.md's diagram names these packages on these layers."""
    doc = (ROOT.parent / "docs" / "architecture.md").read_text()
    diagram = doc[doc.index("\nLayers:"):doc.index("entry-point groups (")]
    drawn: dict[int, set[str]] = {}
    for line in diagram.splitlines():
        if m := re.match(r"\s+(\d)\s+(.*?)(?:\s{3,}|$)", line):  # names, then 3 spaces
            drawn[int(m.group(1))] = set(re.findall(r"circuit-[a-z]+", m.group(2)))
    assert drawn == dict(enumerate(PACKAGE_LAYERS))
    assert set().union(*PACKAGE_LAYERS) == set(projects())


@pytest.mark.unit
def test_packages_import_only_lower_layers_and_declare_what_they_import():
    """A package imports circuit packages of lower layers only (so no tool imports another),
    and exactly those it declares as dependencies: no interface used undeclared."""
    rank = {name: i for i, layer in enumerate(PACKAGE_LAYERS) for name in layer}
    found = projects()
    wrong = []
    for name in sorted(rank):
        project = found[name]
        module = name.replace("-", "_")
        imported = set().union(*map(circuit_imports, (project["dir"] / "src" / module)
                                    .rglob("*.py"))) - {module}
        declared = {requirement_name(r) for r in project.get("dependencies", [])}
        uses = {i.replace("_", "-") for i in imported}
        wrong += [f"{name} imports {other} (layer {rank[other]})" for other in sorted(uses)
                  if rank.get(other, 99) >= rank[name]]
        if uses != declared & set(rank):
            wrong.append(f"{name} imports {sorted(uses)} but declares "
                         f"{sorted(declared & set(rank))}")
    assert wrong == []


@pytest.mark.unit
def test_each_entry_point_group_is_filled_by_the_tools_the_diagram_names():
    doc = (ROOT.parent / "docs" / "architecture.md").read_text()
    groups = doc[doc.index("entry-point groups ("):doc.index("A unit test (tests/unit/test_layers")]
    assert set(re.findall(r"circuit\.[a-z_]+", groups)) == set(DIAGRAM_GROUPS)
    filled: dict[str, set[str]] = {}
    for name, project in projects().items():
        for group in project.get("entry-points", {}):
            filled.setdefault(group, set()).add(name)
    assert filled == DIAGRAM_GROUPS


SOCKET_CLASSES = {"IPRoute", "IPVS", "IPBatch", "NDB", "NetlinkSocket", "IPRSocket",
                  "GenericNetlinkSocket", "AsyncIPRoute", "NetNS"}  # pyroute2's own sockets


def product_modules():
    """Every module of circuit's packages, with its package's directory name."""
    for source in sorted(ROOT.glob("*/src/*/**/*.py")):
        yield source.relative_to(ROOT).parts[0], source


@pytest.mark.unit
def test_all_netlink_goes_through_the_one_core():
    """Only circuit-netlink opens a netlink socket; the others import pyroute2's message
    classes (pyroute2.netlink.*) to encode requests, never one of its socket classes."""
    wrong = []
    for package, source in product_modules():
        for node in ast.walk(ast.parse(source.read_text())):
            where = f"{source.relative_to(ROOT)}:{getattr(node, 'lineno', '?')}"
            spelled = {getattr(node, field, None) for field in ("attr", "id", "name")}
            if package != "netlink" and "AF_NETLINK" in spelled:  # socket.AF_NETLINK, imported
                wrong.append(f"{where}: a netlink socket of its own")
            modules = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module] if isinstance(node, ast.ImportFrom) and node.module else []
            for module in modules:
                if module.split(".")[0] == "pyroute2" and not module.startswith(
                        "pyroute2.netlink"):
                    wrong.append(f"{where}: imports {module}")
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("pyroute2"):
                wrong += [f"{where}: imports {a.name}" for a in node.names
                          if a.name in SOCKET_CLASSES]
    assert wrong == []


@pytest.mark.unit
def test_the_fork_server_protocol_is_one_stdlib_module_both_sides_import():
    """circuit_dispatch.protocol imports the standard library alone (the client loads it
    before anything else), and the client and the server take its framing from it: neither
    spells the magic itself."""
    import sys

    dispatch = ROOT / "dispatch" / "src" / "circuit_dispatch"
    imported = set()
    for node in ast.walk(ast.parse((dispatch / "protocol.py").read_text())):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add("." if node.level else node.module.split(".")[0])
    assert imported <= sys.stdlib_module_names, imported - sys.stdlib_module_names
    for side in ("__init__.py", "forkserver.py"):
        text = (dispatch / side).read_text()
        assert "protocol" in dispatch_names(dispatch / side), side
        assert "circuit-forkserver-1" not in text, side


def dispatch_names(source: Path) -> set[str]:
    """The names imported from circuit_dispatch in source (`from circuit_dispatch import x`)."""
    return {a.name for node in ast.walk(ast.parse(source.read_text()))
            if isinstance(node, ast.ImportFrom) and node.module == "circuit_dispatch"
            for a in node.names}
