"""torch -> ONNX export of the deploy graphs, with contract checks and OpenVINO parity."""
