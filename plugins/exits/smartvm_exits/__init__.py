"""Standard VM-exit handlers for Smart-VM: CPUID policy, MSRs, HLT, control registers, hypercalls, triple fault."""
