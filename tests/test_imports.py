"""The package's shape: no import cycles, a public face (`from minigpt import GPT`) that costs nothing to import."""

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "minigpt"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imported_modules(node, package: str) -> set:
    """The minigpt modules an Import / ImportFrom node loads (`from minigpt import weights` counts weights)."""
    if isinstance(node, ast.Import):
        return {a.name for a in node.names if a.name in MODULES}
    base = node.module or ""
    if node.level:
        parts = package.split(".")[: len(package.split(".")) - node.level + 1]
        base = ".".join(parts + ([base] if base else []))
    submodules = {f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in MODULES}
    names_from_base = len(submodules) < len(node.names)  # `from pkg import name` runs pkg/__init__ for `name`
    return submodules | ({base} if base in MODULES and names_from_base else set())


def imports(name: str):
    """(module-level imports, [(function-level import, its source line)]) of module `name`."""
    path = MODULES[name]
    source = path.read_text()
    lines = source.splitlines()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    top, late = set(), []

    def visit(node, in_function):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                targets = imported_modules(child, package)
                if in_function:
                    late.extend((t, lines[child.lineno - 1]) for t in targets)
                else:
                    top.update(targets)
            else:
                visit(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

    visit(ast.parse(source), False)
    return top, late


GRAPH = {name: imports(name) for name in MODULES}
MODULE_LEVEL = {name: top for name, (top, _) in GRAPH.items()}


def reaches(start: str, goal: str, edges=MODULE_LEVEL) -> bool:
    """Whether importing `start` imports `goal` along `edges` (by default, module-level imports)."""
    seen, todo = set(), [start]
    while todo:
        name = todo.pop()
        if name == goal:
            return True
        if name not in seen:
            seen.add(name)
            todo += edges[name]
    return False


def test_module_level_imports_have_no_cycle():
    cycles = [(a, b) for a in MODULES for b in GRAPH[a][0] if reaches(b, a)]
    assert cycles == []


def test_a_function_level_import_only_breaks_a_real_cycle():
    """`from minigpt.x import y` inside a function is allowed where x imports this module, and says so."""
    for name in sorted(MODULES):
        for target, line in GRAPH[name][1]:
            assert reaches(target, name), f"{name} imports {target} inside a function, but there is no cycle to break"
            assert "cycle" in line, f"{name}: say on the line that the import of {target} breaks a cycle"


def test_no_cycle_even_through_function_level_imports_that_do_not_say_so():
    """The whole graph, less the imports marked as breaking a cycle, is acyclic (today's model <-> generation <->
    weights and bpe <-> bpe_train were cycles through unmarked late imports)."""
    edges = {name: set(top) | {t for t, line in late if "cycle" not in line} for name, (top, late) in GRAPH.items()}
    cycles = {(a, b) for a in edges for b in edges[a] if reaches(b, a, edges)}
    assert cycles == set()


def test_the_public_api_is_importable_from_the_package():
    import minigpt
    from minigpt import GPT, AdamW, BPETokenizer, CharTokenizer, GPTConfig, MinigptError, load_checkpoint, load_tokenizer
    from minigpt.loading import load_checkpoint as loader
    from minigpt.model import GPT as model_class

    assert GPT is model_class and load_checkpoint is loader
    assert GPTConfig().n_layer == 12 and issubclass(MinigptError, Exception)
    assert all(callable(x) for x in (AdamW, BPETokenizer, CharTokenizer, load_tokenizer))
    assert set(minigpt.__all__) <= set(dir(minigpt))


def test_importing_the_package_costs_nothing():
    code = ("import sys, minigpt; import minigpt.errors; "
            "print(sorted(m for m in sys.modules if m.startswith(('minigpt.', 'numpy', 'regex', 'tqdm'))))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            cwd=PACKAGE.parent).stdout.strip()
    assert loaded == "['minigpt.errors']"


def test_the_model_imports_no_tokenizer_download_or_weights_code():
    code = ("import sys, minigpt.model; "
            "print(sorted(m for m in sys.modules if m.startswith(('regex', 'tqdm', 'safetensors', 'minigpt.tokenizer', "
            "'minigpt.download', 'minigpt.weights', 'minigpt.loading'))))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            cwd=PACKAGE.parent).stdout.strip()
    assert loaded == "[]"
