"""The OpenVINO side of bevport: contract checks, compiled graphs and the frame pipeline. NumPy + OpenVINO, no torch."""
