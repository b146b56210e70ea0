"""Job kinds: one module per image operation."""
