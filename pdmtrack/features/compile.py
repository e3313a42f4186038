"""``--compile``: torch.compile of the UNet's blocks, all but the one PDM hooks.

The hooked block gets forward hooks (on its attention projections, and one that ends the
pass right after it) for every feature pass, so it stays eager (hooks added and removed per
pass would make a compiled block recompile). Every other top-level block (down blocks, mid block, the other up blocks) is
compiled in place with static shapes: the first batch of a new frame size pays the compile
time, later batches of that size reuse it. Results agree with the eager UNet to floating point.
"""

from __future__ import annotations

import torch


def compile_unet(unet: torch.nn.Module, hooked_block: str) -> list[str]:
    """Compile ``unet``'s top-level blocks in place except the one holding ``hooked_block``
    (a dotted name such as ``up_blocks.1.attentions.2.transformer_blocks.1``); returns the
    names of the compiled blocks."""
    parts = hooked_block.split(".")
    hooked = ".".join(parts[:2]) if parts[0] in ("down_blocks", "up_blocks") else parts[0]
    compiled = []
    for group in ("down_blocks", "up_blocks"):
        for index, block in enumerate(getattr(unet, group)):
            if f"{group}.{index}" != hooked:
                block.compile(dynamic=False)
                compiled.append(f"{group}.{index}")
    if unet.mid_block is not None and hooked != "mid_block":
        unet.mid_block.compile(dynamic=False)
        compiled.append("mid_block")
    return compiled
