import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
for p in (ROOT, ROOT / "tests", ROOT / "guests"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

import importlib.util as _ilu

_spec = _ilu.spec_from_file_location("docs_gen", ROOT / "docs" / "gen_hooks.py")
docs_gen = _ilu.module_from_spec(_spec)
_spec.loader.exec_module(docs_gen)
sys.modules["docs_gen"] = docs_gen

_gspec = _ilu.spec_from_file_location("guests_build", ROOT / "guests" / "build.py")
guests_build = _ilu.module_from_spec(_gspec)
_gspec.loader.exec_module(guests_build)
sys.modules["guests_build"] = guests_build
