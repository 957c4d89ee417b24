"""Guest-physical memory (EPT) policies for Smart-VM: layout, ROM, MMIO holes, dirty and access tracking, copy-on-write."""
