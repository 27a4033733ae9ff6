"""The order an ensemble's steps run in, from how their tensors connect (Triton's
ensemble_scheduling): each step once every tensor it takes exists. Checked when the
configuration is read, so an ensemble that could never answer is refused with why rather
than failing each request.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol


class Connected(Protocol):
    """A step as the plan sees it: which of the ensemble's tensors it takes and makes."""

    @property
    def model(self) -> str: ...

    @property
    def inputs(self) -> Mapping[str, str]:
        """The step model's input -> the ensemble tensor given to it."""
        ...

    @property
    def outputs(self) -> Mapping[str, str]:
        """The step model's output -> the ensemble tensor it becomes."""
        ...


def waves(steps: Sequence[Connected], inputs: Sequence[str], outputs: Sequence[str]) -> list[list[int]]:
    """The steps (by index) in waves: every step of a wave takes only the ensemble's inputs
    and what earlier waves made, so a wave's steps can run side by side. ValueError where a
    tensor is taken that nothing makes, made twice, or made in a cycle; where an ensemble
    input is taken by no step, or an output made by none."""
    made: dict[str, int] = {}
    for index, step in enumerate(steps):
        for tensor in step.outputs.values():
            if tensor in inputs:
                raise ValueError(f"step {index} ({step.model!r}) makes {tensor!r}, an input of the ensemble")
            if tensor in made:
                raise ValueError(f"tensor {tensor!r} is made by two steps: {made[tensor]} "
                                 f"({steps[made[tensor]].model!r}) and {index} ({step.model!r})")
            made[tensor] = index
    taken = {tensor for step in steps for tensor in step.inputs.values()}
    unused = [name for name in inputs if name not in taken]
    if unused:
        raise ValueError(f"ensemble inputs {unused} are taken by no step")
    unmade = [name for name in outputs if name not in made]
    if unmade:
        raise ValueError(f"ensemble outputs {unmade} are made by no step")
    for index, step in enumerate(steps):
        missing = sorted(t for t in step.inputs.values() if t not in made and t not in inputs)
        if missing:
            raise ValueError(f"step {index} ({step.model!r}) takes {missing}: neither an ensemble input nor any "
                             "step's output")
    order: list[list[int]] = []
    ready, waiting = set(inputs), list(range(len(steps)))
    while waiting:
        wave = [i for i in waiting if all(t in ready for t in steps[i].inputs.values())]
        if not wave:
            raise ValueError(f"steps {waiting} wait on each other's outputs in a cycle")
        order.append(wave)
        ready.update(t for i in wave for t in steps[i].outputs.values())
        waiting = [i for i in waiting if i not in wave]
    return order
