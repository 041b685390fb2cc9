"""The package's layers: no module imports from a layer above its own (issue 15).

    base (config, io, ops, distributed, lr_schedule, machine, checkpoint, convert)
      < data < models < evaluation < builder < engine < command-line entry points and tools

A reader can then understand each layer from the ones below it alone, and a layer can be
tested without the ones above. Every ``import iadet...`` (also inside functions) counts.
"""
import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "iadet"
BASE, DATA, MODELS, EVALUATION, ASSEMBLY, ENGINE, TOP = range(7)
LAYER_OF_PART = {"config": BASE, "io": BASE, "ops": BASE, "distributed": BASE, "lr_schedule": BASE,
                 "machine": BASE, "checkpoint": BASE, "convert": BASE, "data": DATA, "models": MODELS,
                 "evaluation": EVALUATION, "builder": ASSEMBLY, "engine": ENGINE}


def layer(module: str) -> int:
    """Layer of ``iadet.<part>...``; entry points (train, eval, infer, tools, ...) are on top."""
    parts = module.split(".")
    return LAYER_OF_PART.get(parts[1], TOP) if len(parts) > 1 else TOP


def iadet_imports(path: Path):
    package = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names if a.name.startswith("iadet"))
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = package.split(".")[: -node.level] if path.name != "__init__.py" or node.level > 1 else package.split(".")
                yield ".".join(base + ([node.module] if node.module else []))
            elif node.module and node.module.startswith("iadet"):
                yield node.module


MODULES = sorted(PACKAGE.rglob("*.py"))


def test_the_layer_table_knows_every_part():
    parts = {p.relative_to(PACKAGE).parts[0].removesuffix(".py") for p in MODULES} - {"__init__"}
    on_top = parts - set(LAYER_OF_PART)
    assert on_top <= {"train", "eval", "infer", "export", "visualize", "tools", "paper_results"}, on_top


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_import_goes_up(path):
    module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__")
    upward = [m for m in iadet_imports(path) if m != "iadet" and layer(m) > layer(module)]
    assert not upward, f"{module} (layer {layer(module)}) imports from a layer above: {upward}"
