"""The contract stays honest: every hook is tested and documented (datasette's two meta-tests)."""

import inspect
import re
from pathlib import Path

import pytest

import smartvm_core.hookspec as hs

ROOT = Path(__file__).resolve().parents[2]
HOOKS = sorted(name for name, fn in vars(hs).items()
               if inspect.isfunction(fn) and getattr(fn, "smartvm_spec", None) is not None)


def test_there_are_hooks():
    assert {"register_exit_handlers", "load_image", "register_engines", "vm_stopped"} <= set(HOOKS)


@pytest.mark.parametrize("hook", HOOKS)
def test_plugin_hooks_have_tests(hook):
    pattern = re.compile(rf"^def test_hook_{hook}\b", re.M)
    files = [*ROOT.glob("tests/**/*.py"), *ROOT.glob("plugins/*/tests/**/*.py")]
    assert any(pattern.search(f.read_text()) for f in files), f"no test_hook_{hook} anywhere"


@pytest.mark.parametrize("hook", HOOKS)
def test_plugin_hooks_are_documented(hook):
    from docs_gen import hook_signature
    doc = (ROOT / "docs" / "hooks.md").read_text()
    assert f"### `{hook_signature(getattr(hs, hook))}`" in doc, \
        f"docs/hooks.md is stale for {hook}: run python docs/gen_hooks.py"


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_docstrings_follow_the_layout(hook):
    doc = inspect.getdoc(getattr(hs, hook))
    assert doc and "Called" in doc, f"{hook}: say when it is called"
    assert "Use in experiment plugins:" in doc.splitlines()[-1] or "Use in experiment plugins:" in doc
    if getattr(hs, hook).smartvm_spec.get("firstresult"):
        assert "Stops at first non-None result." in doc
    for param in inspect.signature(getattr(hs, hook)).parameters:
        assert f":param {param}:" in doc, f"{hook}: document :param {param}:"


def test_reference_is_current():
    from docs_gen import render
    assert (ROOT / "docs" / "hooks.md").read_text() == render(), "run python docs/gen_hooks.py"
