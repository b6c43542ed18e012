"""Dataset readers (KITTI layout and the original DAIR-V2X-I layout, PCD and .bin point clouds) and the
training-identical preprocessing, in NumPy and Pillow only (no torch)."""
from bevport.data.calib import Calibration
from bevport.data.dataset import CameraView, Frame, open_dataset
from bevport.data.kitti import KittiObject

__all__ = ["CameraView", "Calibration", "Frame", "KittiObject", "open_dataset"]
