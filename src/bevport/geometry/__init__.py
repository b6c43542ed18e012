"""Calibration-dependent geometry in NumPy: the V2X frustum, its BEV lookup table, and pooling (no torch)."""
