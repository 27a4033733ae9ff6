"""The two shipped architectures, written so that they export cleanly to ONNX.

No defaults: every size and the dropout come from training/config.py through the recipes."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval


class FashionCNN(nn.Module):
    """conv-bn-relu-pool x2 -> dense -> logits; widths are arguments so pruning can shrink them."""

    def __init__(self, channels: tuple[int, int], hidden: int, classes: int, dropout: float) -> None:
        super().__init__()
        c1, c2 = channels
        self.conv1, self.bn1 = nn.Conv2d(1, c1, 3, padding=1), nn.BatchNorm2d(c1)
        self.conv2, self.bn2 = nn.Conv2d(c1, c2, 3, padding=1), nn.BatchNorm2d(c2)
        self.pool = nn.MaxPool2d(2)
        self.drop = nn.Dropout(dropout)
        self.fc1 = nn.Linear(c2 * 7 * 7, hidden)
        self.fc2 = nn.Linear(hidden, classes)

    @property
    def widths(self) -> dict[str, int]:
        return {"conv1": self.conv1.out_channels, "conv2": self.conv2.out_channels,
                "hidden": self.fc1.out_features}

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, 1, 28, 28)
        x = self.pool(torch.relu(self.bn1(self.conv1(x))))  # (B, c1, 14, 14)
        x = self.pool(torch.relu(self.bn2(self.conv2(x))))  # (B, c2, 7, 7)
        x = self.drop(torch.flatten(x, 1))  # (B, c2*49)
        x = self.drop(torch.relu(self.fc1(x)))  # (B, hidden)
        return self.fc2(x)  # (B, classes)

    def fused_for_export(self) -> FashionCNN:
        """An eval-mode copy with each BatchNorm folded into its conv (one op fewer per block)."""
        fused = FashionCNN((self.conv1.out_channels, self.conv2.out_channels),
                           self.fc1.out_features, self.fc2.out_features, self.drop.p)
        fused.load_state_dict(self.state_dict())
        fused.eval()
        fused.conv1 = fuse_conv_bn_eval(fused.conv1, fused.bn1)
        fused.conv2 = fuse_conv_bn_eval(fused.conv2, fused.bn2)
        fused.bn1, fused.bn2 = nn.Identity(), nn.Identity()  # type: ignore[assignment]
        return fused


class SentimentLSTM(nn.Module):
    """Embedding -> bidirectional LSTM -> linear, exportable with dynamic batch and length.

    `pack_padded_sequence` does not export to ONNX, so padding is handled by hand: the
    forward direction reads the state at each sequence's last valid step, and the
    backward direction runs a second LSTM over each sequence reversed within its
    length, so trailing padding never reaches either state that is classified.
    """

    def __init__(self, vocab_size: int, embed_dim: int, hidden: int, classes: int, dropout: float) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, embed_dim, padding_idx=0)
        self.forward_lstm = nn.LSTM(embed_dim, hidden, batch_first=True)
        self.backward_lstm = nn.LSTM(embed_dim, hidden, batch_first=True)
        self.drop = nn.Dropout(dropout)
        self.fc = nn.Linear(2 * hidden, classes)

    def forward(self, token_ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        # token_ids: (B, T) int64, lengths: (B,) int64 with 1 <= length <= T
        emb = self.drop(self.embedding(token_ids))  # (B, T, E)
        steps = torch.arange(token_ids.shape[1], device=token_ids.device).unsqueeze(0)  # (1, T)
        last = (lengths - 1).unsqueeze(1)  # (B, 1)
        # Reverse the valid prefix of each row; padding positions map to themselves.
        reverse_index = torch.where(steps <= last, last - steps, steps)  # (B, T)
        emb_reversed = torch.gather(emb, 1, reverse_index.unsqueeze(-1).expand_as(emb))
        out_f, _ = self.forward_lstm(emb)  # (B, T, H)
        out_b, _ = self.backward_lstm(emb_reversed)  # (B, T, H)
        pick = last.unsqueeze(-1).expand(-1, 1, out_f.shape[-1])  # (B, 1, H)
        h = torch.cat([out_f.gather(1, pick), out_b.gather(1, pick)], dim=-1).squeeze(1)  # (B, 2H)
        return self.fc(self.drop(h))  # (B, classes)
