"""PC device models for Smart-VM: 16550A UART, 8259A PIC, 8254 PIT, RTC/CMOS, i8042, debug ports, PCI host, fw_cfg, VGA text."""
