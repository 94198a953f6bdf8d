"""IFNet, the flow network of RIFE v3.6 HD ("IFNet_HDv3"), written for this project.

The architecture (a published fact, reimplemented here): three flow blocks refine a
bidirectional optical flow and a fusion mask from coarse to fine (input scales 1/4, 1/2,
1/1). Each block sees both frames warped by the current flow, the current mask and the
flow, and predicts a residual flow (4 channels: t→0 and t→1) and a residual mask. The
block is run twice per level, once with the frames swapped, and the two answers are
averaged, which keeps the result symmetric in time. The middle frame is the two warped
frames mixed by sigmoid(mask). A fourth "teacher" block exists in the checkpoint for
training only; it is loaded (so the checkpoint matches exactly) and never run.

Inputs are RGB in [0, 1], padded to a multiple of 32 and cropped back.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

PAD = 32


def _conv(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=True), nn.PReLU(cout))


def _resize(x: torch.Tensor, factor: float) -> torch.Tensor:
    if factor == 1:
        return x
    return F.interpolate(x, scale_factor=factor, mode="bilinear", align_corners=False, recompute_scale_factor=False)


class FlowBlock(nn.Module):
    """One refinement level: features at 1/4 of its input scale, 4 residual conv pairs,
    and two transposed-conv heads back up to the input scale (flow and mask)."""

    def __init__(self, cin: int, c: int = 90):
        super().__init__()
        self.conv0 = nn.Sequential(_conv(cin, c // 2, 2), _conv(c // 2, c, 2))
        for i in range(4):
            setattr(self, f"convblock{i}", nn.Sequential(_conv(c, c), _conv(c, c)))
        self.conv1 = nn.Sequential(nn.ConvTranspose2d(c, c // 2, 4, 2, 1), nn.PReLU(c // 2), nn.ConvTranspose2d(c // 2, 4, 4, 2, 1))
        self.conv2 = nn.Sequential(nn.ConvTranspose2d(c, c // 2, 4, 2, 1), nn.PReLU(c // 2), nn.ConvTranspose2d(c // 2, 1, 4, 2, 1))

    def forward(self, frames_and_mask: torch.Tensor, flow: torch.Tensor, scale: float):
        x = _resize(frames_and_mask, 1.0 / scale)
        f = _resize(flow, 1.0 / scale) / scale
        feat = self.conv0(torch.cat((x, f), 1))
        for i in range(4):
            feat = getattr(self, f"convblock{i}")(feat) + feat
        d_flow = _resize(self.conv1(feat), scale) * scale
        d_mask = _resize(self.conv2(feat), scale)
        return d_flow, d_mask


def backward_warp(img: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """Sample `img` at (x + flow_x, y + flow_y); borders are clamped."""
    n, _, h, w = img.shape
    ys = torch.linspace(-1.0, 1.0, h, device=img.device, dtype=img.dtype)
    xs = torch.linspace(-1.0, 1.0, w, device=img.device, dtype=img.dtype)
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    base = torch.stack((gx, gy), -1).unsqueeze(0)
    norm = torch.stack((flow[:, 0] / ((w - 1.0) / 2.0), flow[:, 1] / ((h - 1.0) / 2.0)), -1)
    return F.grid_sample(img, base + norm, mode="bilinear", padding_mode="border", align_corners=True)


class IFNet(nn.Module):
    SCALES = (4.0, 2.0, 1.0)

    def __init__(self):
        super().__init__()
        self.block0 = FlowBlock(7 + 4)
        self.block1 = FlowBlock(7 + 4)
        self.block2 = FlowBlock(7 + 4)
        self.block_tea = FlowBlock(10 + 4)  # training-time teacher; kept so the checkpoint loads strictly

    @staticmethod
    def _swap(flow: torch.Tensor) -> torch.Tensor:
        return torch.cat((flow[:, 2:4], flow[:, 0:2]), 1)

    def forward(self, img0: torch.Tensor, img1: torch.Tensor) -> torch.Tensor:
        """Middle frame of img0 and img1 (N, 3, H, W in [0, 1]; H and W multiples of 32)."""
        n, _, h, w = img0.shape
        flow = img0.new_zeros((n, 4, h, w))
        mask = img0.new_zeros((n, 1, h, w))
        warped0, warped1 = img0, img1
        for block, scale in zip((self.block0, self.block1, self.block2), self.SCALES):
            f0, m0 = block(torch.cat((warped0, warped1, mask), 1), flow, scale)
            f1, m1 = block(torch.cat((warped1, warped0, -mask), 1), self._swap(flow), scale)
            flow = flow + (f0 + self._swap(f1)) / 2
            mask = mask + (m0 - m1) / 2
            warped0 = backward_warp(img0, flow[:, :2])
            warped1 = backward_warp(img1, flow[:, 2:4])
        alpha = torch.sigmoid(mask)
        return warped0 * alpha + warped1 * (1 - alpha)


def load_ifnet(path: str, device: str = "cpu", dtype: torch.dtype = torch.float32) -> IFNet:
    """Build IFNet and load a RIFE v3.6 HD state dict (`module.` prefix allowed)."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise ValueError(f"{path} is not a state dict")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    net = IFNet()
    net.load_state_dict(state, strict=True)
    return net.eval().to(device=device, dtype=dtype)


@torch.inference_mode()
def midpoints(net: IFNet, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Middle frames of batches a, b (N, 3, H, W in [0, 1], any H, W): pad to 32, run, crop."""
    h, w = a.shape[-2:]
    ph, pw = (-h) % PAD, (-w) % PAD
    if ph or pw:
        a = F.pad(a, (0, pw, 0, ph))
        b = F.pad(b, (0, pw, 0, ph))
    return net(a, b)[..., :h, :w].clamp_(0, 1)
