"""Dependencies point one way: seedjax.eval may import seedjax.data, never the reverse. Every
module under seedjax/data is parsed (not imported) and each import statement, also inside
functions and relative ones, is resolved to an absolute module name."""
import ast
import pathlib

import seedjax

ROOT = pathlib.Path(seedjax.__file__).resolve().parent


def _imports(source: str, package: str) -> list[tuple[int, str]]:
    """(line, absolute module or module.name) of every import in ``source``, a module of
    ``package``."""
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([base] if base else []))
            out += [(node.lineno, f"{base}.{a.name}" if base else a.name) for a in node.names]
    return out


def test_nothing_in_seedjax_data_imports_seedjax_eval():
    files = sorted((ROOT / "data").rglob("*.py"))
    assert len(files) >= 8  # the package's modules were found
    bad = []
    for p in files:
        package = ".".join(("seedjax",) + p.relative_to(ROOT).parts[:-1])
        bad += [f"{p.relative_to(ROOT.parent)}:{line} imports {name}"
                for line, name in _imports(p.read_text(), package)
                if name == "seedjax.eval" or name.startswith("seedjax.eval.")]
    assert not bad, "seedjax.data must not import seedjax.eval:\n" + "\n".join(bad)


def test_the_parser_sees_relative_and_function_level_imports():
    """The check would catch ``from ..eval import x`` inside a function, and plain imports."""
    src = "import numpy\ndef f():\n    from ..eval import task_scoring\n    import seedjax.eval\n"
    assert _imports(src, "seedjax.data") == [
        (1, "numpy"), (3, "seedjax.eval.task_scoring"), (4, "seedjax.eval")]
