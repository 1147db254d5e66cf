"""Command-line entry points (`resd-train`, `resd-evaluate`, `resd-generate`; `launch/*.py` in a checkout)."""
