"""PyTorch reference architectures for the conversion tests (written here, no torchvision).

Each class reproduces the state_dict layout of the public PyTorch code it stands for.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class _BlockA(nn.Module):
    """akamaster/pytorch_resnet_cifar10 BasicBlock with the option-A shortcut."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.pad = planes // 4 if (stride != 1 or in_planes != planes) else None

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        sc = x if self.pad is None else F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))
        return F.relu(out + sc)


class ResNetHeTorch(nn.Module):
    """He et al. CIFAR ResNet-(6n+2), the layout of the shared teachers."""

    def __init__(self, depth: int = 20, num_classes: int = 10):
        super().__init__()
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        in_planes = 16
        for stage, planes in enumerate((16, 32, 64), start=1):
            blocks = []
            for i in range(n):
                stride = 2 if (stage > 1 and i == 0) else 1
                blocks.append(_BlockA(in_planes, planes, stride))
                in_planes = planes
            setattr(self, f"layer{stage}", nn.Sequential(*blocks))
        self.linear = nn.Linear(64, num_classes)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out)


def load_shared_teacher(path, depth: int) -> ResNetHeTorch:
    """A shared teacher checkpoint in eval mode (weights_only load, 'module.' stripped)."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    sd = {k.removeprefix("module."): v for k, v in ckpt["state_dict"].items()}
    model = ResNetHeTorch(depth)
    model.load_state_dict(sd, strict=False)  # the checkpoint has no num_batches_tracked
    return model.eval()


def randomize_bn_stats(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BatchNorm non-trivial running stats and affine params (tests of eval mode)."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.5)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) * 1.5 + 0.5)
            m.weight.data.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.bias.shape, generator=g) * 0.2)
    return model.eval()
