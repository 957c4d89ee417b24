"""The ctypes structures and ioctl numbers agree with the C headers (compiled with gcc)."""

from __future__ import annotations

import ctypes
import shutil
import subprocess
from pathlib import Path

import pytest

from smartvm_core.engines.kvm import ioctls, structs

# kvm_msrs/kvm_cpuid2 headers end in flexible arrays: C's sizeof counts the header only.
FIELDS = {
    "kvm_run": ["exit_reason", "ready_for_interrupt_injection", "cr8", "apic_base", "kvm_valid_regs",
                "kvm_dirty_regs", "s"],
    "kvm_sync_regs": ["regs", "sregs", "events"],
    "kvm_sregs": ["gdt", "idt", "cr0", "efer", "apic_base", "interrupt_bitmap"],
    "kvm_fpu": ["fcw", "last_ip", "xmm", "mxcsr"],
    "kvm_vcpu_events": ["interrupt", "nmi", "sipi_vector", "flags", "smi", "exception_has_payload",
                        "exception_payload"],
    "kvm_debugregs": ["dr6", "dr7", "flags"],
    "kvm_guest_debug": ["arch"],
    "kvm_msr_filter": ["ranges"],
    "kvm_msr_filter_range": ["bitmap"],
    "kvm_segment": ["selector", "type", "unusable"],
    "kvm_xcrs": ["xcrs", "padding"],
    "kvm_pit_state2": ["flags"],
    "kvm_irqchip": ["chip"],
    "kvm_enable_cap": ["args", "pad"],
}
RUN_UNION = {"io": ["data_offset", "count"], "mmio": ["data", "len", "is_write"],
             "msr": ["reason", "index", "data"], "internal": ["data"], "debug": ["arch"],
             "fail_entry": ["cpu"], "emulation_failure": ["insn_size", "insn_bytes"]}
IOCTLS = [n for n in ioctls.NAMES.values()]


@pytest.fixture(scope="module")
def c_values(tmp_path_factory) -> dict[str, int]:
    gcc = shutil.which("gcc")
    if gcc is None or not Path("/usr/include/linux/kvm.h").exists():
        pytest.skip("gcc or linux/kvm.h missing: cannot compare with the C headers")
    lines = ["#include <stdio.h>", "#include <stddef.h>", "#include <linux/kvm.h>", "int main(void){"]
    for s in structs.STRUCTS:
        lines.append(f'printf("sizeof {s.__name__} %zu\\n", sizeof(struct {s.__name__}));')
    for name, fields in FIELDS.items():
        for f in fields:
            lines.append(f'printf("offsetof {name}.{f} %zu\\n", offsetof(struct {name}, {f}));')
    for member, fields in RUN_UNION.items():
        for f in fields:
            lines.append(f'printf("offsetof kvm_run.{member}.{f} %zu\\n", offsetof(struct kvm_run, {member}.{f}));')
    for name in IOCTLS:
        lines.append(f'printf("ioctl {name} %lu\\n", (unsigned long){name});')
    for name, value in vars(structs).items():
        if name.startswith(("KVM_EXIT_", "KVM_CAP_", "KVM_MEM_", "KVM_GUESTDBG_", "KVM_MSR_",
                             "KVM_SYNC_X86_")) \
                and isinstance(value, int) and name not in ("KVM_EXIT_MEMORY_FAULT", "KVM_MSR_FILTER_MAX_RANGES"):
            lines.append(f'#ifdef {name}\nprintf("const {name} %ld\\n", (long){name});\n#endif')
    lines.append("return 0;}")
    d = tmp_path_factory.mktemp("kvmh")
    (d / "t.c").write_text("\n".join(lines))
    proc = subprocess.run([gcc, "-o", str(d / "t"), str(d / "t.c")], capture_output=True, text=True)
    if proc.returncode:
        pytest.fail(proc.stderr[-3000:])
    out = subprocess.run([str(d / "t")], capture_output=True, text=True, check=True).stdout
    return {" ".join(line.split()[:2]): int(line.split()[2]) for line in out.splitlines()}


def _offset(cls: type, path: str) -> int:
    off = 0
    for part in path.split("."):
        if part in RUN_UNION and cls is structs.kvm_run:
            off += structs.kvm_run.u.offset + getattr(structs.kvm_run_exit_union, part).offset
            cls = dict(structs.kvm_run_exit_union._fields_)[part]
            continue
        field = getattr(cls, part)
        off += field.offset
        cls = dict(cls._fields_)[part]
    return off


def test_struct_sizes_match_headers(c_values):
    for s in structs.STRUCTS:
        assert ctypes.sizeof(s) == c_values[f"sizeof {s.__name__}"], s.__name__


def test_field_offsets_match_headers(c_values):
    for name, fields in FIELDS.items():
        cls = getattr(structs, name)
        for f in fields:
            assert _offset(cls, f) == c_values[f"offsetof {name}.{f}"], f"{name}.{f}"
    for member, fields in RUN_UNION.items():
        for f in fields:
            assert _offset(structs.kvm_run, f"{member}.{f}") == c_values[f"offsetof kvm_run.{member}.{f}"]


def test_ioctl_numbers_match_headers(c_values):
    for name in IOCTLS:
        assert getattr(ioctls, name) == c_values[f"ioctl {name}"], name


def test_constants_match_headers(c_values):
    checked = 0
    for key, value in c_values.items():
        if key.startswith("const "):
            assert getattr(structs, key[6:]) == value, key
            checked += 1
    assert checked > 40


def test_variable_length_factories():
    t = structs.make_kvm_msrs(3)
    assert ctypes.sizeof(t) == 8 + 3 * 16
    assert structs.make_kvm_msrs(3) is t
    assert ctypes.sizeof(structs.make_kvm_cpuid2(2)) == 8 + 2 * 40
