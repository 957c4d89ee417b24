"""The decoders of the VM-exit information fields load on first use, and stay
importable from every place they were importable before (PEP 562)."""

from __future__ import annotations

import subprocess
import sys

import pytest

import smartvm_core.vmx as vmx
from smartvm_core.vmx import exit_info, qualifications

LAZY = ("CrAccessQualification", "CrAccessType", "EptViolationQualification", "ExitInterruptionInfo",
        "IdtVectoringInfo", "IoQualification", "MovDrQualification", "TaskSwitchQualification",
        "TaskSwitchSource")


@pytest.mark.parametrize("name", LAZY)
def test_same_object_from_every_module(name: str) -> None:
    value = getattr(exit_info, name)
    assert getattr(vmx, name) is value
    assert getattr(qualifications, name) is value
    assert name in vmx.__all__ and name in dir(vmx) and name in dir(qualifications)


def test_star_import_and_dispatch_table() -> None:
    space: dict[str, object] = {}
    exec("from smartvm_core.vmx import *", space)
    assert all(space[name] is getattr(exit_info, name) for name in LAZY)
    assert qualifications.QUALIFICATION_DECODERS is exit_info.QUALIFICATION_DECODERS
    assert qualifications.Qualification is exit_info.Qualification
    assert issubclass(vmx.ExitInterruptionInfo, vmx.InterruptionInfo)


def test_unknown_name_is_still_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no_such_name"):
        vmx.no_such_name  # noqa: B018
    with pytest.raises(AttributeError, match="no_such_name"):
        qualifications.no_such_name  # noqa: B018
    with pytest.raises(ImportError):
        exec("from smartvm_core.vmx import no_such_name", {})


def test_vmx_import_does_not_build_the_decoders() -> None:
    """Importing the VMX model (as every run does) leaves exit_info unloaded until a decoder is used."""
    code = ("import sys\n"
            "import smartvm_core.vmx as v\n"
            "assert 'smartvm_core.vmx.exit_info' not in sys.modules, 'loaded at import'\n"
            "print(v.decode_qualification(v.ExitReason.IO_INSTRUCTION, 0x3f80008))\n"
            "assert 'smartvm_core.vmx.exit_info' in sys.modules\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "IN al, dx port=0x3f8 size=1"


def test_vmcs_decodes_exit_and_idt_vectoring_information() -> None:
    v = vmx.Vmcs()
    v.write(vmx.VmcsField.VM_EXIT_INTR_INFO, 0x8000_0B0E)
    v.write(vmx.VmcsField.IDT_VECTORING_INFO_FIELD, 0x8000_0B0D)
    expected = vmx.ExitInterruptionInfo(vector=14, type=vmx.InterruptionType.HARDWARE_EXCEPTION,
                                        error_code_valid=True)
    assert v.exit_interruption_info == expected
    assert v.idt_vectoring_info.vector == 13
