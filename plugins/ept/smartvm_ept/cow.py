"""Copy-on-write clones: a VM that starts from another VM's memory without copying it.

The parent's RAM must be shared memory (``[ept] ram_backing = "shared"``,
or ``shared = true`` regions): :meth:`smartvm_core.memory.Backing.cow_clone`
then maps the same pages privately into the clone and freezes the parent,
so neither sees the other's later writes. ROM and other anonymous non-RAM
regions are small and are copied.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from smartvm_core import persist
from smartvm_core.errors import GuestMemoryError, SnapshotError
from smartvm_core.memory import Backing, MemoryRegion

if TYPE_CHECKING:
    from smartvm_core.machine import Machine


def clone_machine(parent: "Machine", child: "Machine") -> None:
    """Make ``child`` continue from ``parent``'s state: memory copy-on-write, vCPUs, devices, EPT policies.

    ``child`` must be built from the same experiment (same layout) and not
    running; ``parent`` must not be running either.
    """
    for m, what in ((parent, "parent"), (child, "clone")):
        if m.state == "running":
            raise SnapshotError(f"{what} machine is running: pause or stop it before cloning")
    pregions, cregions = parent.memory.regions, child.memory.regions
    layout = [(r.gpa, r.size, r.kind, r.offset) for r in pregions]
    if layout != [(r.gpa, r.size, r.kind, r.offset) for r in cregions]:
        raise SnapshotError("clone: the two machines have different guest-physical layouts")
    for r in pregions:
        if r.kind == "ram" and r.backing.fd < 0:
            raise GuestMemoryError(r.gpa, r.size, f"clone: RAM region {r.name!r} is anonymous memory; "
                                   "set [ept] ram_backing = \"shared\" to clone without copying")
    clones: dict[int, Backing] = {}
    old: dict[int, Backing] = {}
    for p, c in zip(pregions, cregions):
        b = clones.get(id(p.backing))
        if b is None:
            if p.backing.fd >= 0:
                b = p.backing.cow_clone(name=f"{p.backing.name}-clone")
            else:  # ROM and friends: small, copied
                b = Backing(p.backing.size, name=p.backing.name)
                b.mmap[:] = p.backing.mmap[:]
            clones[id(p.backing)] = b
        child.memory.remove_region(c)
        c.view.release()
        old[id(c.backing)] = c.backing
        child.memory.add_region(MemoryRegion(c.name, c.gpa, c.size, b, c.offset, p.readonly, c.kind))
    for b in old.values():
        b.close()
    child.memory.rom_writes_dropped.update(parent.memory.rom_writes_dropped)
    persist.restore_cpu_and_devices(child, persist.capture_cpu_and_devices(parent))
    ppol, cpol = parent.services.get("ept"), child.services.get("ept")
    if ppol is not None and cpol is not None:
        cpol.restore(ppol.save())
