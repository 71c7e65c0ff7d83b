"""Model files that run code when loaded, for the tests of what modelpress refuses."""

from __future__ import annotations

import torch


class TouchOnLoad(torch.nn.Module):
    """Passes its input on; loading it as TorchScript runs its `__setstate__`, which
    creates the marker file."""

    def __init__(self, marker: str) -> None:
        super().__init__()
        self.marker = marker
        self.touched = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    @torch.jit.export
    def __getstate__(self) -> tuple[str, bool]:
        return (self.marker, self.training)

    @torch.jit.export
    def __setstate__(self, state: tuple[str, bool]) -> None:
        self.marker = state[0]
        self.training = state[1]
        # Kept in an attribute, or the compiler drops the call as dead code.
        self.touched = int(torch.from_file(self.marker, shared=True, size=1,
                                           dtype=torch.uint8).fill_(1).sum())
