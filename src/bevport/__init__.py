"""bevport: reproducible conversion of BEV-fusion checkpoints into ONNX and INT8 OpenVINO artifacts."""

__version__ = "0.1.0"
