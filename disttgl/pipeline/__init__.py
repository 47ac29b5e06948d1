"""MSPipe's staleness-aware pipeline as pure functions: stage timing, staleness bound, memory versions."""
