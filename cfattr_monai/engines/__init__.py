"""Iteration functions for ignite/MONAI engines whose networks take more than one input."""
