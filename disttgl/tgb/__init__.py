"""Interop with the Temporal Graph Benchmark (TGB): its datasets read offline, its negatives, its
metric and evaluation protocol (docs/design.md)."""
