"""Assemble the test guests in this folder with nasm.

``python guests/build.py`` builds every ``*.asm`` here into ``guests/build/``;
tests call :func:`build_guest`, which rebuilds an image only when its source
(or an ``%include``d file in this folder) is newer than the image.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

GUESTS = Path(__file__).resolve().parent
BUILD = GUESTS / "build"


class GuestBuildError(RuntimeError):
    pass


def nasm() -> str:
    path = shutil.which("nasm")
    if path is None:
        raise GuestBuildError("nasm is not installed (Debian package 'nasm'); it assembles the test guests")
    return path


def build_guest(name: str, *, fmt: str = "bin", defines: dict[str, str | int] | None = None) -> Path:
    """Assemble ``guests/<name>.asm`` (or a path under ``guests/``) and return the image path."""
    src = GUESTS / (name if name.endswith(".asm") else f"{name}.asm")
    if not src.is_file():
        raise GuestBuildError(f"no guest source {src}")
    suffix = "".join(f"-{k}={v}" for k, v in sorted((defines or {}).items()))
    rel = src.relative_to(GUESTS).with_suffix("")
    ext = {"bin": ".bin", "elf32": ".elf", "elf64": ".elf"}.get(fmt, f".{fmt}")
    if fmt == "bin":  # a source may name its image's extension: ";! ext=com" in its first lines
        for line in src.read_text(errors="replace").splitlines()[:5]:
            if line.startswith(";! ext="):
                ext = "." + line.split("=", 1)[1].strip()
    out = BUILD / f"{str(rel).replace('/', '__')}{suffix}{ext}"
    deps = [src, *src.parent.glob("*.inc"), *GUESTS.glob("include/*.inc")]
    if out.exists() and all(out.stat().st_mtime >= d.stat().st_mtime for d in deps):
        return out
    BUILD.mkdir(exist_ok=True)
    cmd = [nasm(), "-f", fmt, "-I", f"{src.parent}/", "-I", f"{GUESTS}/include/", "-o", str(out)]
    cmd += [f"-D{k}={v}" for k, v in (defines or {}).items()]
    cmd.append(str(src))
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        out.unlink(missing_ok=True)
        raise GuestBuildError(f"nasm failed on {src}:\n{proc.stderr}")
    return out


def main(argv: list[str]) -> int:
    """Build the named guests (``demo/hello``), or every flat-binary guest."""
    names = argv or [str(src.relative_to(GUESTS)) for src in sorted(GUESTS.rglob("*.asm"))
                     if "build" not in src.relative_to(GUESTS).parts]
    for name in names:
        print(build_guest(name))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
