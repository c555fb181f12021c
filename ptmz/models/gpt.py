"""GPT-w: a decoder-only transformer whose model dimension w is the load axis.

Token embeddings plus learned position embeddings, `depth` pre-norm causal blocks (the ViT's
blocks with a causal mask: heads of 32 dimensions, an MLP of 4w GELU units), a final LayerNorm
and a linear map to next-token logits. GPT-2's init: N(0, 0.02^2) weights and embeddings, zero
biases. Inputs are token ids (N, T) with T at most the context length; outputs (N, T, vocab).
"""

from __future__ import annotations

import torch
from torch import nn

from ptmz.models.vit import Block, heads_for

DEPTH = 4


class GPT(nn.Module):
    def __init__(self, width: int, depth: int, vocab: int, context: int) -> None:
        super().__init__()
        heads = heads_for(width)
        self.tokens = nn.Embedding(vocab, width)
        self.pos = nn.Parameter(torch.zeros(1, context, width))
        self.blocks = nn.Sequential(*(Block(width, heads, causal=True) for _ in range(depth)))
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, vocab)
        for m in self.modules():
            if isinstance(m, nn.Linear | nn.Embedding):
                nn.init.normal_(m.weight, std=0.02)
            if isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.pos, std=0.02)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.tokens(tokens) + self.pos[:, : tokens.shape[1]]
        return self.head(self.norm(self.blocks(x)))


def gpt(width: int, in_channels: int = 65, num_classes: int = 256, image_size: int = 65) -> GPT:
    """A GPT over `num_classes` tokens for the dataset's windows of `image_size` tokens: its
    context is one less (inputs and targets are a window's first and last tokens but one)."""
    return GPT(width, DEPTH, num_classes, image_size - 1)
