import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from ept_guests import engine  # noqa: E402,F401  (the per-engine fixture)
