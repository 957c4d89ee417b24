"""Engine-independent x86 helpers: CPU mode entry states, descriptor tables, page tables."""
