"""Command lines: duald-synthesize and the demo."""
