"""What a ``smartvm run`` imports before ``Machine.run``: only what the run uses.

Each check runs a fresh interpreter, builds the machine of an experiment
(the soft engine, so that it runs on every host) and stops before the run,
then lists the modules loaded. A module on the list here is one that this
run never uses; importing it at start-up is start-up time for nothing.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

#: zipfile is not on the list: unicorn (the soft engine) imports it
NOT_AT_START = ("base64", "json", "smartvm_core.vmx.exit_info", "smartvm_boot.loaders.bzimage",
                "smartvm_boot.loaders.elf", "smartvm_boot.loaders.multiboot")


def test_building_a_machine_leaves_unused_modules_unloaded(tmp_path: Path) -> None:
    image = tmp_path / "hlt.bin"
    image.write_bytes(b"\xf4")  # HLT
    exp = tmp_path / "exp.toml"
    exp.write_text(f'[machine]\nengine = "soft"\nmemory = "2M"\n'
                   f'[[image]]\npath = "{image}"\nformat = "flat"\naddress = 0x1000\nmode = "real"\n')
    code = f"""
import sys
from smartvm_core import cli, machine
class Built(BaseException):
    pass
def run(self):
    raise Built
machine.Machine.run = run
try:
    cli.main(["run", {str(exp)!r}, "--report", "none"])
except Built:
    pass
else:
    raise SystemExit("the machine was not built")
print(" ".join(sorted(m for m in {NOT_AT_START!r} if m in sys.modules)))
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == []
