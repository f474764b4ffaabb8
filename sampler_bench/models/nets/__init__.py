"""Our own network code (clean-room re-implementations that load the original state-dict keys)."""
