"""The engine's shape: one home per idea, dependencies that point one way, no cycles, no hidden imports."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path


ENGINE = Path(__file__).resolve().parents[2] / "engine"


def _module_name(path: Path) -> str:
    parts = path.relative_to(ENGINE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in ENGINE.rglob("*.py")}


def _engine_imports(tree: ast.AST, top_level_only: bool) -> set[str]:
    """Engine modules a module imports; `from engine.runs import store` depends on engine.runs.store."""
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found = set()
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("engine"):
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in MODULES else node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("engine"))
    return found


def _graph() -> dict[str, set[str]]:
    return {name: {m for m in _engine_imports(ast.parse(path.read_text()), True) if m in MODULES and m != name}
            for name, path in MODULES.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_no_import_cycle_in_the_engine():
    graph = _graph()
    assert len(graph) > 40 and graph["engine.runs.execute"] >= {"engine.training.trainer", "engine.runs.store"}
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_the_cycle_check_can_fail():
    """The old registry <-> pretrained pair is what the check must catch."""
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_function_local_engine_imports():
    """Every dependency shows at the top of its module (engine and pages alike)."""
    hidden = []
    for path in [*ENGINE.rglob("*.py"), *(ENGINE.parent / "pages").glob("*.py"), ENGINE.parent / "streamlit_app.py"]:
        tree = ast.parse(path.read_text())
        local = _engine_imports(tree, False) - _engine_imports(tree, True)
        hidden += [f"{path.name}: {m}" for m in sorted(local)]
    assert hidden == []


def _loaded_by(*modules: str) -> set[str]:
    code = f"import sys; import {', '.join(modules)}; print('\\n'.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=ENGINE.parent).stdout
    return set(out.split())


def test_inference_and_visualize_never_import_training():
    loaded = _loaded_by("engine.inference.predict", "engine.inference.batch", "engine.inference.export",
                        "engine.visualize.images", "engine.visualize.gradcam")
    assert "engine.inference.predict" in loaded
    assert sorted(m for m in loaded if m.startswith("engine.training")) == []


def test_store_queue_and_config_load_neither_training_nor_torch():
    """What the CLI's queue commands and the sidebar need answers without importing torch (≈ 3 s)."""
    loaded = _loaded_by("engine.runs.store", "engine.runs.queue", "engine.runs.lifecycle", "engine.config",
                        "engine.cli.queue")
    assert "engine.runs.store" in loaded
    assert [m for m in loaded if m.startswith("engine.training") or m == "torch"] == []


def test_every_cli_command_module_exists_and_registers():
    from engine.cli.main import COMMAND_MODULES, build_parser
    parser = build_parser()           # imports every module: a missing one raises here instead of vanishing
    choices = parser._subparsers._group_actions[0].choices       # noqa: SLF001 - argparse keeps them there
    assert sorted(choices) == sorted(COMMAND_MODULES)


def _top_level_names(path: Path) -> set[str]:
    names = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
    return names


ONE_HOME = ("TASKS", "METRIC_TITLES", "TASK_METRICS", "LOWER_IS_BETTER", "OPTIMIZER_TITLES", "SCHEDULE_TITLES",
            "to_rgb", "overlay", "PALETTE", "create_run", "run_dir", "pick_device", "checkpoint_path",
            "load_manifest", "default_loss", "default_monitor")


def test_each_idea_is_defined_once():
    """Names that used to exist twice with different rules (to_rgb, create_run, TASKS ×4) have one home."""
    where: dict[str, list[str]] = {name: [] for name in ONE_HOME}
    for path in [*ENGINE.rglob("*.py"), *(ENGINE.parent / "pages").glob("*.py")]:
        for name in _top_level_names(path) & set(ONE_HOME):
            where[name].append(str(path.relative_to(ENGINE.parent)))
    assert {name: paths for name, paths in where.items() if len(paths) != 1} == {}
