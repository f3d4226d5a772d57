"""Stream mode: lattice-sampled frames from many sources, encoded once in shared batches (engine.py)."""
