"""Calibration sets, NNCF post-training quantization and the FP32-vs-INT8 report."""
