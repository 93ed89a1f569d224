"""No import cycles between inferencekit's modules (scripts/import_cycles.py), and the check itself finds one."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "import_cycles.py"


def _check(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), str(root)], capture_output=True, text=True, timeout=120)


def test_inferencekit_has_no_import_cycles():
    done = _check(SCRIPT.parents[1] / "src" / "inferencekit")
    assert done.returncode == 0, done.stdout
    assert done.stdout.rstrip().endswith(" 0 cycle(s)")


def test_the_check_finds_lazy_and_package_cycles_but_not_type_checking_imports(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("from pkg.sub import helper\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "helper.py").write_text("def f():\n    from pkg import registry  # lazy: still a cycle\n")
    (pkg / "registry.py").write_text("from . import sub\nimport pkg.sub.helper\n")
    (pkg / "typed.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg import other\n")
    (pkg / "other.py").write_text("from pkg.typed import *\n")
    done = _check(pkg)
    assert done.returncode == 1
    assert "cycle of 2 modules: pkg.registry -> pkg.sub.helper -> pkg.registry" in done.stdout
    assert "pkg.typed" not in done.stdout and done.stdout.rstrip().endswith("1 cycle(s)")
