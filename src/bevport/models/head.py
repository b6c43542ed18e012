"""CenterHead with SeparateHead branches (mmdet3d CenterPoint), as BEVFusion registers them."""
from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

import torch
from torch import nn

from bevport.models.necks import ConvModule


class SeparateHead(nn.Module):
    """One Sequential per output: (num_conv - 1) x ConvModule(3x3) then a biased conv to the output channels.

    Attributes are registered in the order of `heads` (common heads, then heatmap), which is the checkpoint order.
    """

    def __init__(self, in_channels: int, heads: Dict[str, Tuple[int, int]], head_conv: int = 64,
                 final_kernel: int = 3, init_bias: float = -2.19):
        super().__init__()
        self.heads = list(heads)
        pad = final_kernel // 2
        for name, (channels, num_conv) in heads.items():
            layers: List[nn.Module] = []
            c_in = in_channels
            for _ in range(num_conv - 1):
                layers.append(ConvModule(c_in, head_conv, final_kernel, padding=pad))
                c_in = head_conv
            layers.append(nn.Conv2d(c_in, channels, final_kernel, padding=pad, bias=True))
            branch = nn.Sequential(*layers)
            if name == "heatmap":
                nn.init.constant_(branch[-1].bias, init_bias)
            setattr(self, name, branch)

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        return {name: getattr(self, name)(x) for name in self.heads}


class CenterHead(nn.Module):
    def __init__(self, in_channels: int, tasks: Sequence[Sequence[str]], common_heads: Dict[str, Sequence[int]],
                 share_conv_channel: int = 64, head_conv: int = 64, final_kernel: int = 3,
                 num_heatmap_convs: int = 2, init_bias: float = -2.19):
        super().__init__()
        self.shared_conv = ConvModule(in_channels, share_conv_channel, 3, padding=1)
        self.task_heads = nn.ModuleList()
        for task in tasks:
            heads = {name: (int(spec[0]), int(spec[1])) for name, spec in common_heads.items()}
            heads["heatmap"] = (len(task), num_heatmap_convs)
            self.task_heads.append(SeparateHead(share_conv_channel, heads, head_conv, final_kernel, init_bias))

    def forward(self, x: torch.Tensor) -> List[Dict[str, torch.Tensor]]:
        """Raw outputs per task: heatmap logits, log sizes in `dim` (no sigmoid, no exp)."""
        x = self.shared_conv(x)
        return [task(x) for task in self.task_heads]


def head_tensors(tasks: List[Dict[str, torch.Tensor]], slices) -> Tuple[torch.Tensor, ...]:
    """Each contract output (its HeadSlices): its tasks' attributes, concatenated along channels in slice order."""
    return tuple(torch.cat([tasks[s.task][s.attr] for s in parts], dim=1) if len(parts) > 1
                 else tasks[parts[0].task][parts[0].attr] for parts in slices)
