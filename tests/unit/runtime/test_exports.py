"""Each runtime module's `__all__` lists exactly its public names (after httpx's
tests/test_exported_members.py): every name it defines at top level without a leading
underscore, and nothing it lacks."""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil

import pytest

import sas_runtime

MODULES = sorted(
    info.name
    for info in pkgutil.walk_packages(sas_runtime.__path__, "sas_runtime.")
    if not info.name.startswith("sas_runtime.kernels")
)


def _defined_public_names(source: str) -> set[str]:
    """Names bound at the module's top level by def, class or assignment (imports excluded)."""
    names: set[str] = set()
    for node in ast.parse(source).body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
    return {name for name in names if not name.startswith("_") and name != "logger"}


@pytest.mark.parametrize("module_name", MODULES)
def test_all_lists_the_public_names(module_name: str) -> None:
    module = importlib.import_module(module_name)
    exported = getattr(module, "__all__", None)
    assert exported is not None, f"{module_name} has no __all__"
    assert len(exported) == len(set(exported)), "__all__ repeats a name"
    missing = [name for name in exported if not hasattr(module, name)]
    assert not missing, f"__all__ names what the module lacks: {missing}"
    unlisted = _defined_public_names(inspect.getsource(module)) - set(exported)
    assert not unlisted, f"public but not in __all__: {sorted(unlisted)}"
