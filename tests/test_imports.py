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


ALL_EDGES = {name: set(top) | {target for target, _ in late} for name, (top, late) in GRAPH.items()}

# The house, ground floor first: a module imports only from its own floor or below (function-level imports count).
FLOORS = [
    ("the ground: errors, files, paths, names, logs", ("minigpt.errors", "minigpt.paths", "minigpt.hub",
                                                       "minigpt.atomic", "minigpt.cli", "minigpt.download",
                                                       "minigpt.host_memory", "minigpt.lock", "minigpt.schema",
                                                       "minigpt.checksums")),
    ("the CUDA sources", ("minigpt.kernels",)),
    ("arrays, communicators, text, its token files and shards, the run's log",
     ("minigpt.backend", "minigpt.distributed", "minigpt.tokenizer", "minigpt.data", "minigpt.shards",
      "minigpt.batch_sampling", "minigpt.health", "minigpt.runlog")),
    ("the plain layers", ("minigpt.nn",)),
    ("the fast layers and their table", ("minigpt.fast",)),
    ("the model's fields", ("minigpt.model_config",)),
    ("what works on a model it is handed (the loaders take the class)",
     ("minigpt.generation", "minigpt.optim", "minigpt.parallel", "minigpt.perplexity", "minigpt.weights",
      "minigpt.locate", "minigpt.tasks", "minigpt.logits_processors", "minigpt.sampling",
      "minigpt.speculative", "minigpt.recompute")),
    ("the model", ("minigpt.model",)),
    ("LoRA's adapters on a model, and their files", ("minigpt.lora",)),
    ("the memory plan of a run, from shapes", ("minigpt.memory_plan",)),
    ("built on the model", ("minigpt.loading", "minigpt.checkpoint", "minigpt.config", "minigpt.gradcheck",
                            "minigpt.preparation")),
    ("training", ("minigpt.trainer",)),
    ("the package's face (imports lazily)", ("minigpt",)),
]

def floor(name: str) -> int:
    """The floor of module `name`: its longest prefix in FLOORS (the package itself only by its own name)."""
    matches = [(len(prefix), i) for i, (_, prefixes) in enumerate(FLOORS) for prefix in prefixes
               if name == prefix or (prefix != "minigpt" and name.startswith(prefix + "."))]
    assert matches, f"{name} is on no floor of FLOORS"
    return max(matches)[1]


def test_every_module_is_on_a_floor():
    for name in MODULES:
        floor(name)


def test_no_import_runs_up_a_floor():
    upward = {(a, b) for a, targets in ALL_EDGES.items() for b in targets if floor(b) > floor(a)}
    assert upward == set(), [(a, FLOORS[floor(a)][0], b, FLOORS[floor(b)][0]) for a, b in upward]


def test_no_cycle_counting_function_level_imports():
    """The whole graph, function-level imports included, is acyclic."""
    cycles = {(a, b) for a in ALL_EDGES for b in ALL_EDGES[a] if reaches(b, a, ALL_EDGES)}
    assert cycles == set()


def test_module_level_imports_have_no_cycle():
    cycles = [(a, b) for a in MODULES for b in GRAPH[a][0] if reaches(b, a)]
    assert cycles == []


def test_a_function_level_import_says_why_it_is_not_at_the_top():
    """An import inside a function is an edge like any other; the line says why it waits (e.g. to keep
    `import minigpt.model` free of file and download code)."""
    for name in sorted(MODULES):
        for target, line in GRAPH[name][1]:
            assert "#" in line, f"{name}: say on the line why the import of {target} is inside a function"


def test_a_function_level_import_back_up_is_a_cycle():
    """The checks above can fail: locate building GPTs (as loading did for model.py's old from_pretrained)."""
    edges = {name: set(targets) for name, targets in ALL_EDGES.items()}
    edges["minigpt.locate"] = edges["minigpt.locate"] | {"minigpt.model"}  # as if locate built GPTs
    assert reaches("minigpt.locate", "minigpt.model", edges) and reaches("minigpt.model", "minigpt.locate", edges)


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
