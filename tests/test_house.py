"""The house rules of the package, checked on its source (ast, no import): the layers import only
downwards, ``engine`` / ``analysis`` / ``inference`` never import each other, and no module imports
another module's private (``_name``) helper, nor another package's private module."""
from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "vitfer"

#: What each part of the package may import from vitfer (besides itself).
ALLOWED = {
    "runtime": set(),
    "study_tables": set(),
    "layers": {"runtime"},
    "models": {"layers", "runtime"},
    "weights": {"models", "layers", "runtime"},
    "data": {"runtime"},
    "engine": {"data", "weights", "models", "layers", "runtime", "study_tables"},
    "analysis": {"data", "weights", "models", "layers", "runtime", "study_tables"},
    "inference": {"data", "weights", "models", "layers", "runtime"},
    "demo": {"analysis", "inference", "data", "weights", "models", "layers", "runtime"},
    "cli": {"engine", "analysis", "inference", "demo", "data", "weights", "models", "layers", "runtime",
            "study_tables"},
    "train": {"engine"},
}


def _imports(path: Path):
    tree = ast.parse(path.read_text(), str(path))
    parts = path.relative_to(PKG.parent).with_suffix("").parts
    package = parts[:-1] if parts[-1] != "__init__" else parts[:-1]
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = list(package[: len(package) - node.level + 1])
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            yield node.lineno, mod, [a.name for a in node.names]
        elif isinstance(node, ast.Import):
            for a in node.names:
                yield node.lineno, a.name, []


def _part(module: str) -> str | None:
    bits = module.split(".")
    return bits[1] if bits[0] == "vitfer" and len(bits) > 1 else None


def test_layers_import_only_downwards():
    bad = []
    for path in sorted(PKG.rglob("*.py")):
        own = path.relative_to(PKG).parts[0].removesuffix(".py")
        if own == "__init__":
            continue
        for line, mod, _ in _imports(path):
            other = _part(mod)
            if other and other != own and other not in ALLOWED[own]:
                bad.append(f"{path.relative_to(PKG.parent)}:{line} imports {mod}")
    assert not bad, "\n".join(bad)


def test_no_private_helper_is_imported_from_another_module():
    bad = []
    for path in sorted(PKG.rglob("*.py")):
        for line, mod, names in _imports(path):
            if not mod.startswith("vitfer"):
                continue
            private = [n for n in names if n.startswith("_") and not n.startswith("__")]
            if private:
                bad.append(f"{path.relative_to(PKG.parent)}:{line} imports {private} from {mod}")
            # a package's private module (vitfer/cli/_common.py) serves that package only
            bits = mod.split(".")
            for k, bit in enumerate(bits):
                if bit.startswith("_") and not bit.startswith("__"):
                    owner = PKG.parent.joinpath(*bits[:k])
                    if owner not in path.parents:
                        bad.append(f"{path.relative_to(PKG.parent)}:{line} imports the private module {mod}")
    assert not bad, "\n".join(bad)
