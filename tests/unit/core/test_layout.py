"""The test layout: every module of fcos_d2 has a test module, tests/**/test_<module>.py, or
one listed here that imports it; test module names are unique."""

import collections
import os
from pathlib import Path

from helpers import ROOT

#: Modules whose tests live in a test module of another name: (that file, a name from the
#: module that it uses).
TESTED_IN = {
    "fcos_d2/__init__.py": ("tests/unit/core/test_imports.py", "import fcos_d2"),
}


def _modules():
    root = Path(ROOT)
    for path in sorted((root / "fcos_d2").rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        if path.name != "__init__.py" or rel == "fcos_d2/__init__.py":
            yield rel


def _test_files():
    return sorted(Path(ROOT, "tests").rglob("test_*.py"))


def _dotted(module: str) -> str:
    return module[: -len(".py")].replace("/", ".").removesuffix(".__init__")


def test_every_module_has_a_test_module():
    names = {p.name for p in _test_files()}
    missing = []
    for module in _modules():
        if module in TESTED_IN:
            test_file, name = TESTED_IN[module]
            assert name in Path(ROOT, test_file).read_text(), f"{test_file} does not use {name}"
            assert name.rsplit(".", 1)[-1] in Path(ROOT, module).read_text() or name.startswith(
                ("import", _dotted(module))
            )
        elif f"test_{os.path.basename(module)}" not in names:
            missing.append(module)
    assert not missing, f"modules without tests/**/test_<module>.py: {missing}"


def test_test_module_names_are_unique_and_tests_are_by_kind():
    counts = collections.Counter(p.name for p in _test_files())
    assert [n for n, c in counts.items() if c > 1] == []
    kinds = {p.relative_to(Path(ROOT, "tests")).parts[0] for p in _test_files()}
    assert kinds == {"unit", "integration"}
