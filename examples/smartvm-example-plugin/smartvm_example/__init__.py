"""An example third-party Smart-VM plugin (see docs/plugin-guide.md)."""
