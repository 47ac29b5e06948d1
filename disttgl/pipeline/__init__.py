"""MSPipe: staleness-aware pipelined training (docs/design.md)."""
