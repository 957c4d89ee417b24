"""Firmware tables a PC platform hands to its firmware through fw_cfg: ACPI and SMBIOS."""
