"""disttgl: distributed training of memory-based temporal GNNs (DistTGL, MSPipe, TMA, snapshot DGNNs)."""

__version__ = "0.1.0"

# Version of the on-disk graph store and batch cache layouts; bumped on any incompatible change.
FORMAT_VERSION = 1
