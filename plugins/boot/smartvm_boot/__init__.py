"""Image loaders for Smart-VM: flat, boot sector, .COM, BIOS ROM, multiboot, ELF, Linux bzImage."""
