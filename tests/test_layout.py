"""The shape of the code that users and contributors rely on: the driver starts without
torch, no import cycles, and every pipeline is one file behind a descriptor."""

from __future__ import annotations

import ast
import re
import json
import subprocess
import sys
import typing
from pathlib import Path

import pytest

from farm.pipelines import REGISTRY, descriptor
from farm.spec import ModelSpec

pytestmark = pytest.mark.quick  # no Ray, no render: in scripts/test.sh --quick

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("farm", "actors", "scheduler")


def test_the_driver_and_the_cli_import_neither_torch_nor_diffusers():
    """The driver only orchestrates: it starts in a fraction of a second and holds no model
    library; torch and diffusers load on the actors."""
    code = ("import sys, json, scheduler.driver, scheduler.pool, scheduler.cli\n"
            "print(json.dumps({m: m in sys.modules for m in ('torch', 'diffusers', 'transformers')}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert json.loads(out.stdout) == {"torch": False, "diffusers": False, "transformers": False}


def _module_imports() -> dict[str, set[str]]:
    """Each module's imports of the project's own modules, at the top or inside functions
    (an import moved into a function does not break a cycle); TYPE_CHECKING blocks aside."""
    modules = {}
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
            modules[name] = path
    graph = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text())
        typing_only = {id(n) for block in ast.walk(tree) if isinstance(block, ast.If)
                       and "TYPE_CHECKING" in ast.unparse(block.test) for n in ast.walk(block)}
        found = set()
        for node in ast.walk(tree):
            if id(node) in typing_only:
                continue
            if isinstance(node, ast.Import):
                found |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                found |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
        graph[name] = {m for m in found if m in modules and m != name}
    return graph


def test_no_module_imports_itself_back_through_others():
    graph = _module_imports()
    state: dict[str, int] = {}  # 1 on the stack, 2 done

    def visit(name: str, stack: list[str]) -> None:
        state[name] = 1
        for dep in sorted(graph[name]):
            if state.get(dep) == 1:
                pytest.fail("import cycle: " + " -> ".join(stack[stack.index(dep):] + [dep]))
            if dep not in state:
                visit(dep, stack + [dep])
        state[name] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])


def test_farm_never_imports_ray():
    """farm/ is the pure core: it runs in any process, with or without a cluster."""
    for path in (ROOT / "farm").rglob("*.py"):
        tree = ast.parse(path.read_text())
        names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        names |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        assert not {m for m in names if m.split(".")[0] == "ray"}, path


def test_every_pipeline_the_spec_accepts_has_a_descriptor_and_a_renderer():
    from farm.renderers import renderer_class

    accepted = set(typing.get_args(ModelSpec.model_fields["pipeline"].annotation))
    assert accepted == {"animatediff", "animatediff-controlnet", "svd", "wan", "wan-i2v"} == set(REGISTRY)
    for name in REGISTRY:
        d = descriptor(name)
        assert d.name == name and d.tiny_base
        assert callable(renderer_class(name).render)
    with pytest.raises(ValueError, match="unknown pipeline 'nope'; known: animatediff"):
        descriptor("nope")


def test_no_code_outside_the_pipeline_files_and_the_spec_names_wan():
    """Wan was added as the descriptor's proof: one file (two, with image to video) and its
    registry lines. Its tiny builders sit with the other tiny models."""
    allowed = {ROOT / "farm/pipelines/wan.py", ROOT / "farm/pipelines/wan_i2v.py", ROOT / "farm/pipelines/__init__.py",
               ROOT / "farm/spec.py", ROOT / "farm/models/tiny.py"}
    for folder in ("farm", "actors", "scheduler"):
        for path in (ROOT / folder).rglob("*.py"):
            if path not in allowed:
                found = re.findall(r"\bwan\b|wan[-_]i2v|WanPipeline", path.read_text(), flags=re.IGNORECASE)
                assert not found, f"{path}: {found}"


def test_generic_code_never_asks_for_a_pipeline_s_name():
    generic = [*(ROOT / "scheduler").glob("*.py"), ROOT / "farm/keys.py", ROOT / "farm/tasks.py",
               ROOT / "farm/renderers.py", ROOT / "actors/pipeline.py"]
    for path in generic:
        for lineno, line in enumerate(path.read_text().splitlines(), 1):
            assert "pipeline ==" not in line and 'pipeline == "' not in line, f"{path.name}:{lineno}: {line.strip()}"
