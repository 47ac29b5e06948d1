"""Commands that choose between training systems (one process, i x j x k, and the systems to come),
so they sit above every system's room; a stage's own command lives in its stage (``cache/command.py``)."""
