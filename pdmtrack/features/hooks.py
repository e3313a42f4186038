"""Capturing PDM's tensors at one UNet transformer block by observing diffusers' attention.

Nothing of diffusers is copied or replaced: forward hooks on the chosen block's self-attention
(attn1) and cross-attention (attn2) projections record their outputs as diffusers' own
processor computes them, so a diffusers upgrade cannot silently change the features:

- attn1: query and key projections (heads merged) -> appearance = (q + k) / 2, and with
  ``keep_qk`` the two apart (appearance_parts, the authors' code matches them separately)
- attn2: query of the spatial tokens -> semantic; key of each class name's tokens -> class
  vectors; cross-attention probabilities of the class tokens (softmax over all prompt
  tokens of q k^T * scale, heads averaged) -> class attention. A name's tokens are averaged.

If a diffusers version stops calling ``to_q``/``to_k`` (fused projections), the pass records
nothing and ``capture_block`` raises instead of returning stale or empty features. The hooks
are removed when the context exits, also on error. With ``stop_after`` the pass ends at the
block: the layers after it are not computed.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from pdmtrack.errors import ParameterError


def attention_blocks(unet: torch.nn.Module) -> list[str]:
    """Names of the UNet's transformer blocks that have self- and cross-attention, in order."""
    names = []
    for name, module in unet.named_modules():
        attn1, attn2 = getattr(module, "attn1", None), getattr(module, "attn2", None)
        if attn1 is not None and attn2 is not None and getattr(attn2, "is_cross_attention", False):
            names.append(name)
    return names


def default_block(unet: torch.nn.Module) -> str:
    """The last transformer block of the last up-block that has attention (PDM's layer)."""
    up_blocks = [name for name in attention_blocks(unet) if name.startswith("up_blocks.")]
    if not up_blocks:
        raise ParameterError("model", "the UNet has no cross-attention transformer block in its up-blocks")
    last_up = max(int(name.split(".")[1]) for name in up_blocks)
    return [name for name in up_blocks if int(name.split(".")[1]) == last_up][-1]


def resolve_block(unet: torch.nn.Module, name: str | None) -> str:
    """``name`` if it is an attention block of ``unet``; the default block when None."""
    if name is None:
        return default_block(unet)
    valid = attention_blocks(unet)
    if name not in valid:
        problem = f"'{name}' is not a transformer block with cross-attention; valid blocks: {', '.join(valid)}"
        raise ParameterError("layer", problem)
    return name


@dataclass
class BlockCapture:
    """What one UNet pass left at the hooked block (tokens last: (B, N, C)).

    appearance: (B, N, C1); semantic: (B, N, C2); class_vectors: (K, C2) or None;
    class_attention: (B, N, K) or None; appearance_parts: (B, 2, N, C1) (query, key) or None.
    Filled by the processors, None before the pass.
    """

    appearance: torch.Tensor | None = None
    semantic: torch.Tensor | None = None
    class_vectors: torch.Tensor | None = None
    class_attention: torch.Tensor | None = None
    appearance_parts: torch.Tensor | None = None


def _merge_name_tokens(tensor: torch.Tensor, groups: Sequence[Sequence[int]]) -> torch.Tensor:
    """Average ``tensor[..., tokens, :]`` over each group's token positions -> (..., K, C)."""
    return torch.stack([tensor[..., list(tokens), :].mean(dim=-2) for tokens in groups], dim=-2)


class _Observer:
    """Forward hooks on attn1/attn2 and their ``to_q``/``to_k`` that fill a ``BlockCapture``."""

    def __init__(self, block: torch.nn.Module, capture: BlockCapture, class_tokens: Sequence[Sequence[int]], keep_qk: bool = False) -> None:
        self.capture = capture
        self.class_tokens = class_tokens
        self.keep_qk = keep_qk
        self.cross = block.attn2
        self.projections: dict[str, torch.Tensor] = {}
        hooks = [
            (block.attn1.to_q, self._keep("q1")),
            (block.attn1.to_k, self._keep("k1")),
            (block.attn2.to_q, self._keep("q2")),
            (block.attn2.to_k, self._keep("k2")),
            (block.attn1, self._self_attention_done),
            (block.attn2, self._cross_attention_done),
        ]
        self.handles = [module.register_forward_hook(hook) for module, hook in hooks]

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()

    def _keep(self, name: str):
        def hook(_module: torch.nn.Module, _args: tuple, output: torch.Tensor) -> None:
            self.projections[name] = output

        return hook

    def _take(self, *names: str) -> list[torch.Tensor]:
        missing = [name for name in names if name not in self.projections]
        if missing:
            raise RuntimeError(f"diffusers' attention did not call to_q/to_k ({', '.join(missing)}): unsupported version")
        return [self.projections.pop(name) for name in names]

    def _self_attention_done(self, *_: object) -> None:
        query, key = self._take("q1", "k1")
        self.capture.appearance = (query + key) / 2
        if self.keep_qk:
            self.capture.appearance_parts = torch.stack([query, key], dim=1)

    def _cross_attention_done(self, *_: object) -> None:
        query, key = self._take("q2", "k2")
        self.capture.semantic = query
        if self.class_tokens:
            # The prompt is the same for every frame: its keys are too; keep frame 0's.
            self.capture.class_vectors = _merge_name_tokens(key[0], self.class_tokens)
            self.capture.class_attention = self._class_attention(query, key)

    def _class_attention(self, query: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
        """(B, N, K) softmax(q k^T * scale) over the prompt tokens, heads averaged, per name."""
        attn = self.cross
        query = query.unflatten(-1, (attn.heads, -1)).transpose(1, 2)
        key = key.unflatten(-1, (attn.heads, -1)).transpose(1, 2)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        probs = ((query.float() @ key.float().transpose(-1, -2)) * attn.scale).softmax(dim=-1).mean(dim=1)
        return _merge_name_tokens(probs.unsqueeze(-1), self.class_tokens).squeeze(-1)


class _BlockReached(Exception):
    """Raised after the hooked block to end a pass whose remaining layers are not needed."""


def _stop_pass(module: torch.nn.Module, args: tuple, output: torch.Tensor) -> None:
    raise _BlockReached


@contextmanager
def capture_block(
    unet: torch.nn.Module, block: str, class_tokens: Sequence[Sequence[int]] = (), stop_after: bool = False, keep_qk: bool = False
) -> Iterator[BlockCapture]:
    """Within the context, every UNet pass records PDM's tensors at ``block``.

    class_tokens: per class name, the prompt token positions of that name (empty: no class).
    stop_after: end the pass right after ``block`` (the rest of the UNet is not computed; the
    context then exits quietly, skipping whatever follows the pass inside it).
    keep_qk: also record attn1's query and key apart (``BlockCapture.appearance_parts``).
    """
    module = unet.get_submodule(block)
    capture = BlockCapture()
    observer = _Observer(module, capture, class_tokens, keep_qk)
    stopper = module.register_forward_hook(_stop_pass) if stop_after else None
    try:
        yield capture
    except _BlockReached:
        pass
    finally:
        if stopper is not None:
            stopper.remove()
        observer.remove()
