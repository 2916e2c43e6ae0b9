"""The lease layer: flannel's lease model and the stores that hold leases.

Stores know nothing of hooks. `open_store(url)` picks an implementation by URL scheme.
"""
