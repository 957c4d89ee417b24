"""Boot configurators: write a boot protocol's structures into guest memory."""
