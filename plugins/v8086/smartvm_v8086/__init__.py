"""The Smart-VM virtual-8086 monitor, with BIOS and DOS services for 8086 programs."""
