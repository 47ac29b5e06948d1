"""Snapshot-based (discrete-time) dynamic GNNs (docs/design.md §11): snapshots of the graph store,
GCN + LSTM and TM-GCN, graph-difference transfer to the training device, and their training."""
