"""Write docs/hooks.md, the hook reference, from smartvm_core/hookspec.py.

Run ``python docs/gen_hooks.py`` after changing a hook; the test
``tests/core/test_hookspec_meta.py`` fails while the reference is stale.
"""

from __future__ import annotations

import inspect
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def hook_signature(fn) -> str:
    sig = inspect.signature(fn)
    params = ", ".join(sig.parameters)
    return f"{fn.__name__}({params})"


def render() -> str:
    import smartvm_core.hookspec as hs

    source = inspect.getsource(hs)
    out = ["# Hook reference", "",
           "Generated from `smartvm_core/hookspec.py` by `python docs/gen_hooks.py`; do not edit by hand.",
           "", inspect.cleandoc(hs.__doc__ or ""), ""]
    # keep the banners (phases) in source order
    lines = source.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("# ") and i > 0 and lines[i - 1].startswith("# ---"):
            out += [f"## {line[2:].strip()}", ""]
        if line.startswith("def "):
            name = line[4:].split("(")[0]
            fn = getattr(hs, name)
            opts = getattr(fn, "smartvm_spec", {}) or {}
            marks = [k for k in ("firstresult", "historic") if opts.get(k)]
            out += [f"### `{hook_signature(fn)}`", ""]
            if marks:
                out += [f"*{', '.join(marks)}*", ""]
            out += [inspect.cleandoc(fn.__doc__ or ""), ""]
    return "\n".join(out).rstrip() + "\n"


if __name__ == "__main__":
    (ROOT / "docs" / "hooks.md").write_text(render())
    print("wrote docs/hooks.md")
