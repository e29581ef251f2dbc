"""The operator image has no torch: importing any operator module must not import it."""

from __future__ import annotations

import pkgutil
import subprocess
import sys
from pathlib import Path

import sas_operator

OPERATOR_DIR = Path(next(iter(sas_operator.__path__)))


def test_no_operator_module_imports_torch() -> None:
    modules = sorted(f"sas_operator.{m.name}" for m in pkgutil.iter_modules([str(OPERATOR_DIR)]))
    assert {"sas_operator.spec", "sas_operator.handlers", "sas_operator.__main__"} <= set(modules)
    probe = (
        "import importlib, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'numpy'))\n"
        "print(','.join(heavy))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=120
    )
    assert result.stdout.strip() == ""


def test_operator_is_a_namespace_package_that_shadows_nothing() -> None:
    import operator

    assert not (OPERATOR_DIR / "__init__.py").exists()
    assert operator.add(1, 2) == 3
