"""``text`` never imports ``data`` (DESIGN.md): checked on the import statements of every module."""
from __future__ import annotations

import ast
from pathlib import Path

import medalign_lite.text

TEXT = Path(medalign_lite.text.__file__).parent
PACKAGE = "medalign_lite.text"

#: (module, what it imports) pairs allowed for now, with the reason.
ALLOWED: set[tuple[str, str]] = set()


def imported_modules(path: Path, package: str) -> set[str]:
    """Absolute names of every module ``path`` (a module of ``package``) imports, at the top or
    inside a function."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            target = node.module or ""
            if node.level:
                parts = package.split(".")
                assert node.level <= len(parts), f"{path}: relative import beyond the top package"
                base = ".".join(parts[: len(parts) - node.level + 1])
                target = f"{base}.{node.module}" if node.module else base
            names.add(target)
            names.update(f"{target}.{a.name}" for a in node.names)  # `from .. import data`
    return names


def package_of(path: Path) -> str:
    return ".".join([PACKAGE, *path.relative_to(TEXT).parent.parts])


def is_data(name: str) -> bool:
    return name == "medalign_lite.data" or name.startswith("medalign_lite.data.")


def test_imported_modules_resolves_relative_imports(tmp_path):
    f = tmp_path / "probe.py"
    f.write_text("from ..data.findings import Finding\nfrom .. import data\nfrom . import labeler\n"
                 "def g():\n    import medalign_lite.data.manifest\n")
    found = imported_modules(f, "medalign_lite.text")
    assert {"medalign_lite.data.findings", "medalign_lite.data", "medalign_lite.text.labeler",
            "medalign_lite.data.manifest"} <= found
    assert all(is_data(n) for n in ("medalign_lite.data", "medalign_lite.data.findings"))
    assert not is_data("medalign_lite.dataset")


def test_text_never_imports_data():
    modules = sorted(TEXT.rglob("*.py"))
    assert {p.name for p in modules} >= {"labeler.py", "phrases.py", "tokenizer.py", "observations.py"}
    found = {(p.relative_to(TEXT).as_posix(), n) for p in modules
             for n in imported_modules(p, package_of(p)) if is_data(n)}
    allowed = {(f, n) for f, n in found for af, am in ALLOWED if f == af and (n == am or n.startswith(am + "."))}
    assert found <= allowed, sorted(found - allowed)
