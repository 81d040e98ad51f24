"""The package's layers: no import cycle, and every import points down the layers.

Read from the source (every import a module runs, at the top or inside a
function; those under ``if TYPE_CHECKING:`` only name types and run nothing).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from ..conftest import ROOT

PACKAGE = ROOT / "dawning_streams"

#: Each layer may import its own modules and those of lower ranks.
RANK = {
    "core": 0,
    "kafka": 1,
    "observability": 2,
    "bus": 3,
    "handlers": 3,
    "services": 3,
    "ops": 4,
    # The composition root: the app and the package's public surface.
    "": 5,
}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 and parts[1] in RANK else ""


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def runtime_imports(path: Path, modules: set[str]) -> set[str]:
    """The package modules ``path`` imports when it runs."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                dotted = f"{node.module}.{alias.name}"
                found.add(dotted if dotted in modules else node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text()))
    assert not [
        n
        for n in ast.walk(ast.parse(path.read_text()))
        if isinstance(n, ast.ImportFrom) and n.level
    ], f"{path}: relative import"
    return {m for m in found if m in modules}


def graph() -> dict[str, set[str]]:
    paths = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    modules = set(paths)
    return {name: runtime_imports(path, modules) - {name} for name, path in paths.items()}


def test_no_module_of_the_package_imports_itself_back() -> None:
    imports = graph()
    cycles: list[list[str]] = []

    def walk(module: str, trail: list[str]) -> None:
        for target in sorted(imports[module]):
            if target in trail:
                cycles.append([*trail[trail.index(target) :], target])
            elif target not in seen:
                seen.add(target)
                walk(target, [*trail, target])

    seen: set[str] = set()
    for start in sorted(imports):
        if start not in seen:
            seen.add(start)
            walk(start, [start])
    assert cycles == []


def test_every_import_points_down_the_layers() -> None:
    upward = [
        f"{module} ({layer(module) or 'root'}) imports {target} ({layer(target) or 'root'})"
        for module, targets in graph().items()
        for target in targets
        if RANK[layer(target)] > RANK[layer(module)]
        or (layer(target) != layer(module) and RANK[layer(target)] == RANK[layer(module)])
    ]
    assert upward == []


def test_core_needs_no_transport_redis_or_web() -> None:
    """core may build on Faust's models and codecs (a message is a faust.Record)."""
    for path in (PACKAGE / "core").glob("*.py"):
        text = path.read_text()
        for banned in ("aiokafka", "redis", "faust.transport", "faust.web", "mode"):
            assert f"import {banned}" not in text and f"from {banned}" not in text, (path, banned)


def test_the_graph_is_read_at_all() -> None:
    imports = graph()
    assert "dawning_streams.core.records" in imports["dawning_streams.core.codec"]
    assert "dawning_streams.kafka.lanes" in imports["dawning_streams.kafka.transport"]


def test_a_module_past_400_lines_says_why_in_its_docstring() -> None:
    """Modules are kept short enough to read in one sitting; a longer one names
    its reason ("... past 400 lines ...") where a reader starts."""
    unexplained = []
    for path in sorted(PACKAGE.rglob("*.py")):
        source = path.read_text()
        docstring = ast.get_docstring(ast.parse(source)) or ""
        if len(source.splitlines()) > 400 and "400 lines" not in " ".join(docstring.split()):
            unexplained.append(f"{path.relative_to(ROOT)} ({len(source.splitlines())} lines)")
    assert not unexplained, unexplained


def test_no_layer_names_the_app_it_serves() -> None:
    """Below the composition root no module names the framework's App, not even
    for types: a layer takes settings, a faust.App, narrow collaborators, or an
    interface of its own that the App implements (``HandlerHost``, ``OpsHost``,
    or a Protocol such as ``BusHost``)."""
    naming = [
        str(path.relative_to(ROOT))
        for folder in RANK
        if folder
        for path in sorted((PACKAGE / folder).rglob("*.py"))
        if "dawning_streams.application" in path.read_text()
    ]
    assert not naming, naming


def test_the_app_implements_each_layers_interface() -> None:
    from dawning_streams.application import App
    from dawning_streams.handlers.host import HandlerHost
    from dawning_streams.ops.host import OpsHost

    assert issubclass(App, OpsHost) and issubclass(OpsHost, HandlerHost)
    abstract = [
        f"{host.__name__}.{name}"
        for host in (HandlerHost, OpsHost)
        for name, member in vars(host).items()
        if callable(member) or isinstance(member, property)
        if getattr(App, name) is member
    ]
    assert not abstract, f"the App does not implement {abstract}"


#: What a process that only sends never uses, and does not load: redis-py (8 MB,
#: loaded by the first Redis client, which only a worker makes), and the OTLP
#: exporters' protobuf and HTTP stack (loaded when ``Otel:Endpoint`` is set).
NOT_LOADED_BY_SENDERS = ("redis", "opentelemetry.exporter.otlp", "google.protobuf")


def test_a_process_that_only_sends_does_not_load_what_only_a_worker_or_an_exporter_uses(
    tmp_path: Path,
) -> None:
    script = (
        "import sys\n"
        "from dawning_streams import UserEventMessage, create_app\n"
        "app = create_app()\n"
        "@app.handler(UserEventMessage, name='sent_only')\n"
        "async def sent_only(message: UserEventMessage) -> None: ...\n"
        f"unwanted = {NOT_LOADED_BY_SENDERS!r}\n"
        "def unwanted_module(m): return any(m == u or m.startswith(u + '.') for u in unwanted)\n"
        "loaded = [m for m in sys.modules if unwanted_module(m)]\n"
        "print(sorted(loaded))\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip() == "[]", run.stdout
