"""Model core: architecture facts, networks, losses, slice stacks, intensity mappings, metrics."""
