"""Streaming drift of one output against a reference (cosine, SNR, max abs error), in NumPy: what `bevport validate`
and the quantization report both measure."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict

import numpy as np


@dataclass
class Drift:
    """Streaming comparison of one output against the reference, over all held-out frames."""
    ref_energy: float = 0.0
    err_energy: float = 0.0
    dot: float = 0.0
    out_energy: float = 0.0
    max_abs: float = 0.0

    def add(self, ref: np.ndarray, out: np.ndarray) -> None:
        r, o = ref.astype(np.float64).ravel(), out.astype(np.float64).ravel()
        self.ref_energy += float(r @ r)
        self.err_energy += float((r - o) @ (r - o))
        self.dot += float(r @ o)
        self.out_energy += float(o @ o)
        self.max_abs = max(self.max_abs, float(np.max(np.abs(r - o))) if r.size else 0.0)

    def summary(self) -> Dict[str, float]:
        norms = math.sqrt(self.ref_energy * self.out_energy)
        cosine = self.dot / norms if norms > 0 else float(self.ref_energy == self.out_energy)
        snr = None  # identical outputs: no error to measure
        if self.err_energy > 0:
            snr = 10 * math.log10(self.ref_energy / self.err_energy) if self.ref_energy > 0 else -999.0
        return {"cosine": cosine, "snr_db": snr, "max_abs_error": self.max_abs}
