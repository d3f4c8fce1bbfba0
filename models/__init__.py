"""Datasets, the two-layer ReLU network, its trainer, closed-form constructions and theory diagnostics."""
