"""ViT-w: a small vision transformer whose embedding width w is the load axis.

Non-overlapping p x p patches (p = 2 for images under 16 pixels, 4 up to 32, 8 above) are
embedded linearly into w dimensions; a learned class token and learned position embeddings are
added; `depth` pre-norm blocks follow (multi-head self-attention, then an MLP of 4w GELU units,
each in a residual), and the class token's final LayerNorm feeds the classifier. Heads have 32
dimensions (a single head below w = 32), so the number of heads grows with the width. Init as
in the original ViT: Xavier-uniform linear layers with zero biases, a zero classifier, torch's
default for the patch embedding, position embeddings N(0, 0.02^2), a zero class token.

Attention is written out, softmax(q k^T / sqrt(d)) v, rather than through a fused kernel: the
landscape tasks differentiate the loss twice, which fused attention kernels do not support.
"""

from __future__ import annotations

import torch
from torch import nn

from ptmz.errors import ConfigError

HEAD_DIM = 32
DEPTH = 6


def patch_size(image_size: int) -> int:
    return 2 if image_size < 16 else 4 if image_size <= 32 else 8


def heads_for(width: int) -> int:
    """Heads of HEAD_DIM dimensions; a single head below that."""
    if width > HEAD_DIM and width % HEAD_DIM:
        raise ConfigError("width", width, f"below {HEAD_DIM} or a multiple of {HEAD_DIM}")
    return max(1, width // HEAD_DIM)


class Attention(nn.Module):
    """Multi-head self-attention; `causal`: each token attends to itself and earlier ones."""

    def __init__(self, width: int, heads: int, causal: bool = False) -> None:
        super().__init__()
        self.heads, self.causal = heads, causal
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, tokens, width = x.shape
        head_dim = width // self.heads
        q, k, v = self.qkv(x).view(n, tokens, 3, self.heads, head_dim).permute(2, 0, 3, 1, 4)
        scores = q @ k.transpose(-2, -1) * head_dim**-0.5
        if self.causal:
            later = torch.ones(tokens, tokens, dtype=torch.bool, device=x.device).triu(1)
            scores = scores.masked_fill(later, float("-inf"))
        weights = scores.softmax(-1)
        return self.proj((weights @ v).transpose(1, 2).reshape(n, tokens, width))


class Block(nn.Module):
    def __init__(self, width: int, heads: int, causal: bool = False) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(width)
        self.attn = Attention(width, heads, causal)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(
            nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViT(nn.Module):
    def __init__(
        self, width: int, depth: int, in_channels: int, num_classes: int, image_size: int
    ) -> None:
        super().__init__()
        heads = heads_for(width)
        patch = patch_size(image_size)
        if image_size % patch:
            raise ConfigError("image size", image_size, f"a multiple of the patch size {patch}")
        self.patch = nn.Conv2d(in_channels, width, patch, stride=patch)
        self.cls = nn.Parameter(torch.zeros(1, 1, width))
        self.pos = nn.Parameter(torch.zeros(1, (image_size // patch) ** 2 + 1, width))
        self.blocks = nn.Sequential(*(Block(width, heads) for _ in range(depth)))
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, num_classes)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        self.patch.reset_parameters()
        nn.init.zeros_(self.head.weight)
        nn.init.normal_(self.pos, std=0.02)
        nn.init.zeros_(self.cls)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], 1) + self.pos
        return self.head(self.norm(self.blocks(x))[:, 0])


def vit(width: int, in_channels: int = 3, num_classes: int = 10, image_size: int = 32) -> ViT:
    return ViT(width, DEPTH, in_channels, num_classes, image_size)
