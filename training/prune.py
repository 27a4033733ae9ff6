"""Pruning and model-size accounting.

Structured pruning removes whole conv channels and dense units (ranked by L1 norm) and
rebuilds a smaller network, so the compute really goes away. Unstructured magnitude
pruning zeroes the smallest weights (for compressed size) and is then made permanent.
"""

from __future__ import annotations

import torch
from torch import nn

from training.models import FashionCNN


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def sparsity(model: nn.Module) -> float:
    """Fraction of weights (not biases or norms) that are exactly zero."""
    weights = [p for name, p in model.named_parameters() if "weight" in name and p.dim() > 1]
    total = sum(w.numel() for w in weights)
    return float(sum(int((w == 0).sum()) for w in weights) / total) if total else 0.0


def count_macs(model: nn.Module, *inputs: torch.Tensor) -> int:
    """Multiply-accumulates of one forward pass per item, from the layers actually run."""
    macs = 0

    def conv_hook(m: nn.Conv2d, _inp: object, out: torch.Tensor) -> None:
        nonlocal macs
        kh, kw = m.kernel_size
        macs += out[0].numel() * (m.in_channels // m.groups) * kh * kw

    def linear_hook(m: nn.Linear, _inp: object, out: torch.Tensor) -> None:
        nonlocal macs
        macs += out[0].numel() * m.in_features

    def lstm_hook(m: nn.LSTM, inp: tuple[torch.Tensor, ...], _out: object) -> None:
        nonlocal macs
        steps = inp[0].shape[1] if m.batch_first else inp[0].shape[0]
        macs += steps * 4 * m.hidden_size * (m.input_size + m.hidden_size)

    hooks = []
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            hooks.append(module.register_forward_hook(conv_hook))
        elif isinstance(module, nn.Linear):
            hooks.append(module.register_forward_hook(linear_hook))
        elif isinstance(module, nn.LSTM):
            hooks.append(module.register_forward_hook(lstm_hook))
    was_training = model.training
    model.eval()
    with torch.no_grad():
        model(*(x[:1] for x in inputs))
    model.train(was_training)
    for h in hooks:
        h.remove()
    return macs


def _top_l1(weight: torch.Tensor, keep: int) -> torch.Tensor:
    """Indices of the `keep` output units with the largest L1 norm, in original order."""
    norms = weight.abs().flatten(1).sum(1)
    return norms.topk(keep).indices.sort().values


def kept_width(width: int, keep: float, multiple: int) -> int:
    """`width * keep` rounded to the nearest multiple of `multiple`, at least one multiple
    and at most `width` (which is kept whole when it is smaller than one multiple)."""
    if width <= multiple:
        return width
    return min(width, max(multiple, multiple * round(width * keep / multiple)))


def prune_cnn_structured(model: FashionCNN, keep_channels: float, keep_hidden: float,
                         multiple: int = 1) -> FashionCNN:
    """A smaller FashionCNN holding the strongest conv channels and dense units, each
    width rounded to a multiple of `multiple`."""
    c1, c2, hidden = model.widths["conv1"], model.widths["conv2"], model.widths["hidden"]
    k1 = kept_width(c1, keep_channels, multiple)
    k2 = kept_width(c2, keep_channels, multiple)
    kh = kept_width(hidden, keep_hidden, multiple)
    # Rank by the BN-scaled filter norm: a filter whose BN gamma is tiny contributes little.
    keep1 = _top_l1(model.conv1.weight * model.bn1.weight.abs().view(-1, 1, 1, 1), k1)
    keep2 = _top_l1(model.conv2.weight * model.bn2.weight.abs().view(-1, 1, 1, 1), k2)
    keep_h = _top_l1(model.fc1.weight, kh)
    # fc1's inputs are conv2's channels flattened channel-major, 49 positions each.
    fc1_cols = (keep2.unsqueeze(1) * 49 + torch.arange(49)).flatten()

    small = FashionCNN((k1, k2), kh, model.fc2.out_features, model.drop.p)
    with torch.no_grad():
        small.conv1.weight.copy_(model.conv1.weight[keep1])
        small.conv1.bias.copy_(model.conv1.bias[keep1])
        _copy_bn(small.bn1, model.bn1, keep1)
        small.conv2.weight.copy_(model.conv2.weight[keep2][:, keep1])
        small.conv2.bias.copy_(model.conv2.bias[keep2])
        _copy_bn(small.bn2, model.bn2, keep2)
        small.fc1.weight.copy_(model.fc1.weight[keep_h][:, fc1_cols])
        small.fc1.bias.copy_(model.fc1.bias[keep_h])
        small.fc2.weight.copy_(model.fc2.weight[:, keep_h])
        small.fc2.bias.copy_(model.fc2.bias)
    return small


def _copy_bn(dst: nn.BatchNorm2d, src: nn.BatchNorm2d, keep: torch.Tensor) -> None:
    for name in ("weight", "bias", "running_mean", "running_var"):
        getattr(dst, name).copy_(getattr(src, name)[keep])


class MagnitudePruning:
    """Unstructured magnitude pruning: zero the `amount` smallest weights of each tensor and
    keep them zero through fine-tuning (call `apply` after each optimizer step).

    Each tensor is ranked on its own: one global ranking across the embedding and the LSTM
    (whose weights are about ten times smaller) zeroed nearly every LSTM weight and left
    the model predicting one class (docs/benchmarks.md, "Figures behind the code"). Masks multiply the parameters in
    place, which works for every module type, nn.LSTM's flattened weights included.
    """

    def __init__(self, weights: list[torch.Tensor], amount: float) -> None:
        self.weights = weights
        self.masks = [self._mask(w.detach(), amount) for w in weights]
        self.apply()

    @staticmethod
    def _mask(weight: torch.Tensor, amount: float) -> torch.Tensor:
        k = int(amount * weight.numel())
        if k == 0:
            return torch.ones_like(weight, dtype=torch.bool)
        threshold = weight.abs().flatten().kthvalue(k).values
        return weight.abs() > threshold

    @torch.no_grad()
    def apply(self) -> None:
        for weight, mask in zip(self.weights, self.masks, strict=True):
            weight.mul_(mask)
