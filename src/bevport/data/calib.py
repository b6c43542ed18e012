"""One camera's calibration against the LiDAR, in KITTI terms (P2, R0_rect, Tr_velo_to_cam)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from bevport.errors import DatasetError


def _homogeneous(matrix: np.ndarray) -> np.ndarray:
    """A 3x3 or 3x4 matrix as the 4x4 affine transform it stands for."""
    out = np.eye(4, dtype=np.float64)
    out[:3, : matrix.shape[1]] = matrix
    return out


@dataclass
class Calibration:
    """P2 [3,4] projects rectified camera-0 coordinates into this camera's image; R0_rect [3,3] rectifies;
    Tr_velo_to_cam [3,4] maps LiDAR points into camera 0. All float64."""

    P2: np.ndarray
    R0_rect: np.ndarray
    Tr_velo_to_cam: np.ndarray

    def __post_init__(self):
        self.P2 = np.asarray(self.P2, np.float64).reshape(3, 4)
        self.R0_rect = np.asarray(self.R0_rect, np.float64).reshape(3, 3)
        self.Tr_velo_to_cam = np.asarray(self.Tr_velo_to_cam, np.float64).reshape(3, 4)

    def checked(self, source: str) -> "Calibration":
        """This calibration, after checking it can place points: finite numbers, invertible K, R0_rect and
        LiDAR-to-camera transform. Raises a DatasetError naming `source` (the file) otherwise."""
        for name in ("P2", "R0_rect", "Tr_velo_to_cam"):
            if not np.isfinite(getattr(self, name)).all():
                raise DatasetError(f"{source}: {name} holds non-finite numbers (nan or inf)",
                                   "the calibration cannot place points; skip the frame or fix the file")
        for name, matrix in (("the intrinsics P2[:, :3]", self.intrinsics), ("R0_rect", self.R0_rect),
                             ("Tr_velo_to_cam", _homogeneous(self.Tr_velo_to_cam))):
            if np.linalg.cond(matrix) > 1e12:
                raise DatasetError(f"{source}: {name} is singular (not invertible)",
                                   "the calibration cannot place points; skip the frame or fix the file")
        return self

    @classmethod
    def from_dair(cls, cam_K: Sequence[float], rotation, translation) -> "Calibration":
        """DAIR-V2X-I JSON calibration: cam_K (9 numbers, row-major), virtual-LiDAR-to-camera R [3x3] and t [3]."""
        k = np.asarray(cam_K, np.float64).reshape(3, 3)
        tr = np.concatenate([np.asarray(rotation, np.float64).reshape(3, 3),
                             np.asarray(translation, np.float64).reshape(3, 1)], axis=1)
        return cls(np.concatenate([k, np.zeros((3, 1))], axis=1), np.eye(3), tr)

    @property
    def intrinsics(self) -> np.ndarray:
        return self.P2[:, :3].copy()

    @property
    def lidar2cam(self) -> np.ndarray:
        """4x4: LiDAR -> camera 0 (Tr) -> rectified (R0) -> this camera (the offset P2's 4th column encodes)."""
        offset = np.eye(4)
        offset[:3, 3] = np.linalg.solve(self.intrinsics, self.P2[:, 3])
        return offset @ _homogeneous(self.R0_rect) @ _homogeneous(self.Tr_velo_to_cam)

    @property
    def camera2lidar(self) -> np.ndarray:
        # A general inverse: R0_rect and rounded DAIR rotations are not exactly orthonormal.
        return np.linalg.inv(self.lidar2cam)
