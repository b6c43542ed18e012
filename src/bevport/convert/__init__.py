"""`invoke convert`: checkpoint -> ONNX -> calibration -> INT8 IR -> validation -> release bundle, as resumable steps
run in the export and runtime containers (Docker SDK) or in this Python environment (`--runner local`)."""
