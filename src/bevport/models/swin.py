"""Swin Transformer (Liu et al. 2021) as mmdet's `SwinTransformer` builds it, under its checkpoint key names.

Eval-mode numerics follow mmdet exactly: windows padded at the bottom/right to a multiple of the window size, the
cyclic shift by half a window on every second block with the -100 attention mask between shifted regions,
relative position bias from a (2W-1)^2 table indexed by mmdet's `relative_position_index` (a checkpoint buffer),
scale head_dims^-0.5 on q, exact GELU, LayerNorm eps 1e-5, and a LayerNorm on each returned stage.

Written for export: every shape is a Python int when traced at a fixed input size, the shift masks are constants
computed from those ints, and PatchMerging gathers the 2x2 neighbourhood by strided slicing in the channel order
mmdet's `nn.Unfold` sampler produces (channel c of offset (i, j) lands at c*4 + i*2 + j), which also avoids an
Im2Col in the graph.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

Shape = Tuple[int, int]


def relative_position_index(window: int) -> torch.Tensor:
    """[W*W, W*W] int64: mmdet's index into the bias table for every (query, key) pair of a window."""
    rows = torch.arange(0, (2 * window - 1) * window, 2 * window - 1)
    coords = (rows[:, None] + torch.arange(window)[None, :]).reshape(1, -1)
    return (coords + coords.T).flip(1).contiguous()


class WindowMSA(nn.Module):
    """Multi-head self-attention inside each window, with the relative position bias."""

    def __init__(self, embed_dims: int, num_heads: int, window: int, qkv_bias: bool = True):
        super().__init__()
        self.num_heads = num_heads
        self.window = window
        self.scale = (embed_dims // num_heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, num_heads))
        self.register_buffer("relative_position_index", relative_position_index(window))
        self.qkv = nn.Linear(embed_dims, embed_dims * 3, bias=qkv_bias)
        self.proj = nn.Linear(embed_dims, embed_dims)

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """x [windows*B, N, C]; mask [windows, N, N] of 0 / -100 (shifted blocks) or None."""
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = (q * self.scale) @ k.transpose(-2, -1)
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)].view(n, n, -1)
        attn = attn + bias.permute(2, 0, 1).unsqueeze(0)
        if mask is not None:
            windows = mask.shape[0]
            attn = attn.view(b // windows, windows, self.num_heads, n, n) + mask.unsqueeze(1).unsqueeze(0)
            attn = attn.view(-1, self.num_heads, n, n)
        x = (attn.softmax(dim=-1) @ v).transpose(1, 2).reshape(b, n, c)
        return self.proj(x)


def shift_mask(height: int, width: int, window: int, shift: int) -> torch.Tensor:
    """[windows, W*W, W*W] float32: 0 between positions of the same region of the shifted map, -100 otherwise."""
    regions = np.zeros((height, width), np.float32)
    bands = (slice(0, -window), slice(-window, -shift), slice(-shift, None))
    label = 0
    for rows in bands:
        for cols in bands:
            regions[rows, cols] = label
            label += 1
    windows = regions.reshape(height // window, window, width // window, window).transpose(0, 2, 1, 3)
    windows = windows.reshape(-1, window * window)
    differs = windows[:, None, :] != windows[:, :, None]
    return torch.from_numpy(np.where(differs, np.float32(-100.0), np.float32(0.0)))


class ShiftWindowMSA(nn.Module):
    def __init__(self, embed_dims: int, num_heads: int, window: int, shift: int = 0, qkv_bias: bool = True):
        super().__init__()
        self.window = window
        self.shift = shift
        self.w_msa = WindowMSA(embed_dims, num_heads, window, qkv_bias)

    def forward(self, x: torch.Tensor, hw: Shape) -> torch.Tensor:
        b, _, c = x.shape
        h, w = hw
        win = self.window
        x = x.view(b, h, w, c)
        pad_r, pad_b = (win - w % win) % win, (win - h % win) % win
        if pad_r or pad_b:
            x = F.pad(x, (0, 0, 0, pad_r, 0, pad_b))
        hp, wp = h + pad_b, w + pad_r
        mask = None
        if self.shift:
            x = torch.roll(x, shifts=(-self.shift, -self.shift), dims=(1, 2))
            mask = shift_mask(hp, wp, win, self.shift).to(x.dtype)
        windows = x.view(b, hp // win, win, wp // win, win, c).permute(0, 1, 3, 2, 4, 5).reshape(-1, win * win, c)
        windows = self.w_msa(windows, mask)
        x = windows.view(b, hp // win, wp // win, win, win, c).permute(0, 1, 3, 2, 4, 5).reshape(b, hp, wp, c)
        if self.shift:
            x = torch.roll(x, shifts=(self.shift, self.shift), dims=(1, 2))
        return x[:, :h, :w, :].reshape(b, h * w, c)


class FFN(nn.Module):
    """mmcv's FFN with two layers: layers.0 = (Linear, GELU, Dropout), layers.1 = Linear; identity added."""

    def __init__(self, embed_dims: int, hidden: int):
        super().__init__()
        self.layers = nn.Sequential(nn.Sequential(nn.Linear(embed_dims, hidden), nn.GELU(), nn.Dropout(0.0)),
                                    nn.Linear(hidden, embed_dims), nn.Dropout(0.0))

    def forward(self, x: torch.Tensor, identity: torch.Tensor) -> torch.Tensor:
        return identity + self.layers(x)


class SwinBlock(nn.Module):
    def __init__(self, embed_dims: int, num_heads: int, hidden: int, window: int, shift: bool, qkv_bias: bool):
        super().__init__()
        self.norm1 = nn.LayerNorm(embed_dims)
        self.attn = ShiftWindowMSA(embed_dims, num_heads, window, window // 2 if shift else 0, qkv_bias)
        self.norm2 = nn.LayerNorm(embed_dims)
        self.ffn = FFN(embed_dims, hidden)

    def forward(self, x: torch.Tensor, hw: Shape) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), hw)
        return self.ffn(self.norm2(x), identity=x)


class PatchMerging(nn.Module):
    """2x2 neighbourhoods -> LayerNorm(4C) -> Linear(4C, 2C, no bias); odd sizes padded at the bottom/right."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.norm = nn.LayerNorm(4 * in_channels)
        self.reduction = nn.Linear(4 * in_channels, out_channels, bias=False)

    def forward(self, x: torch.Tensor, hw: Shape) -> Tuple[torch.Tensor, Shape]:
        b, _, c = x.shape
        h, w = hw
        x = x.view(b, h, w, c).permute(0, 3, 1, 2)
        if h % 2 or w % 2:
            x = F.pad(x, (0, w % 2, 0, h % 2))
        corners = [x[:, :, i::2, j::2] for i in (0, 1) for j in (0, 1)]       # Unfold's offset order
        out_hw = (corners[0].shape[2], corners[0].shape[3])
        x = torch.stack(corners, dim=2).reshape(b, 4 * c, out_hw[0] * out_hw[1]).transpose(1, 2)
        return self.reduction(self.norm(x)), out_hw


class SwinBlockSequence(nn.Module):
    def __init__(self, embed_dims: int, num_heads: int, hidden: int, depth: int, window: int, qkv_bias: bool,
                 downsample: Optional[PatchMerging]):
        super().__init__()
        self.blocks = nn.ModuleList([SwinBlock(embed_dims, num_heads, hidden, window, i % 2 == 1, qkv_bias)
                                     for i in range(depth)])
        self.downsample = downsample

    def forward(self, x: torch.Tensor, hw: Shape) -> Tuple[torch.Tensor, Shape, torch.Tensor, Shape]:
        for block in self.blocks:
            x = block(x, hw)
        if self.downsample is None:
            return x, hw, x, hw
        down, down_hw = self.downsample(x, hw)
        return down, down_hw, x, hw


class PatchEmbed(nn.Module):
    """Conv patch x patch, stride patch (inputs padded at the bottom/right to a multiple), then LayerNorm."""

    def __init__(self, in_channels: int, embed_dims: int, patch: int):
        super().__init__()
        self.patch = patch
        self.projection = nn.Conv2d(in_channels, embed_dims, patch, stride=patch)
        self.norm = nn.LayerNorm(embed_dims)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, Shape]:
        h, w = x.shape[2:]
        if h % self.patch or w % self.patch:
            x = F.pad(x, (0, -w % self.patch, 0, -h % self.patch))
        x = self.projection(x)
        hw = (x.shape[2], x.shape[3])
        return self.norm(x.flatten(2).transpose(1, 2)), hw


class SwinTransformer(nn.Module):
    """[B, 3, H, W] -> the normalised feature maps [B, C_i, H_i, W_i] of the stages in `out_indices`."""

    def __init__(self, embed_dims: int = 96, depths: Sequence[int] = (2, 2, 6, 2),
                 num_heads: Sequence[int] = (3, 6, 12, 24), window_size: int = 7, mlp_ratio: int = 4,
                 out_indices: Sequence[int] = (1, 2, 3), patch_size: int = 4, qkv_bias: bool = True,
                 in_channels: int = 3):
        super().__init__()
        self.out_indices = tuple(out_indices)
        self.patch_embed = PatchEmbed(in_channels, embed_dims, patch_size)
        self.stages = nn.ModuleList()
        channels = embed_dims
        self.num_features: List[int] = []
        for i, (depth, heads) in enumerate(zip(depths, num_heads)):
            last = i == len(depths) - 1
            downsample = None if last else PatchMerging(channels, 2 * channels)
            self.stages.append(SwinBlockSequence(channels, heads, mlp_ratio * channels, depth, window_size,
                                                 qkv_bias, downsample))
            self.num_features.append(channels)
            channels = channels if last else 2 * channels
        for i in self.out_indices:
            self.add_module(f"norm{i}", nn.LayerNorm(self.num_features[i]))

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        x, hw = self.patch_embed(x)
        outs = []
        for i, stage in enumerate(self.stages):
            x, hw, out, out_hw = stage(x, hw)
            if i in self.out_indices:
                out = getattr(self, f"norm{i}")(out)
                outs.append(out.view(-1, out_hw[0], out_hw[1], self.num_features[i]).permute(0, 3, 1, 2)
                            .contiguous())
        return outs
