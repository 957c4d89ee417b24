"""Announce a hypervisor through CPUID, as KVM, Xen and Hyper-V do.

Guests look for a hypervisor in CPUID leaf 0x40000000: EAX holds the
highest hypervisor leaf and EBX, ECX, EDX a 12-byte vendor signature. This
plugin answers that leaf with "SmartVMxmple" (configurable) and lets every
other leaf pass to the next handler in the chain (the standard CPUID policy
of smartvm-exits), so it shows both precedence and fall-through.

It uses four hooks:

* ``register_config_sections``: an ``[example]`` section in experiment files;
* ``configure``: read that section;
* ``register_exit_handlers``: the CPUID handler (plugins registered after
  smartvm-exits run first; smartvm-exits registers with ``trylast``);
* ``run_report``: how many times the guest asked.
"""

from __future__ import annotations

from smartvm_core import hookimpl
from smartvm_core.config import Key
from smartvm_core.vmx import ExitReason

HYPERVISOR_LEAF = 0x40000000


def _signature(text: str) -> str:
    if len(text.encode("ascii", "replace")) != 12:
        raise ValueError(f"the signature must be 12 ASCII characters, got {text!r}")
    return text


class ExamplePlugin:
    def __init__(self) -> None:
        self.signature = "SmartVMxmple"
        self.queries = 0

    @hookimpl
    def register_config_sections(self, register):
        register("example", {"signature": Key(str, "SmartVMxmple", "12-character hypervisor vendor id",
                                              _signature)}, doc="the example plugin")

    @hookimpl
    def configure(self, experiment):
        self.signature = experiment.section("example").get("signature", self.signature)
        self.queries = 0

    @hookimpl
    def register_exit_handlers(self, register, machine):
        sig = self.signature.encode("ascii")
        ebx, ecx, edx = (int.from_bytes(sig[i:i + 4], "little") for i in (0, 4, 8))

        def handle_cpuid(vcpu, exit):
            regs = vcpu.get_regs()
            if regs.rax & 0xFFFFFFFF != HYPERVISOR_LEAF:
                return False                      # not ours: the next handler decides
            self.queries += 1
            regs.rax, regs.rbx, regs.rcx, regs.rdx = HYPERVISOR_LEAF, ebx, ecx, edx
            vcpu.set_regs(regs)
            vcpu.skip_instruction()
            return True

        register(ExitReason.CPUID, handle_cpuid, name="hypervisor-leaf")

    @hookimpl
    def run_report(self, machine, report):
        report.add_counter("example: hypervisor leaf queries", self.queries)


# The entry point names this module; pluggy registers the module object, so
# expose the hook implementations of one plugin instance at module level.
_plugin = ExamplePlugin()
register_config_sections = _plugin.register_config_sections
configure = _plugin.configure
register_exit_handlers = _plugin.register_exit_handlers
run_report = _plugin.run_report
