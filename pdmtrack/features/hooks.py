"""Attention processors that capture PDM's tensors at one UNet transformer block.

Following diffusers' own extension point, the processors of the chosen block's self-attention
(attn1) and cross-attention (attn2) are swapped for ones that compute the usual attention
output and, on the way, keep what PDM needs — and nothing else:

- attn1: query and key projections (heads merged) -> appearance = (q + k) / 2
- attn2: query of the spatial tokens -> semantic; key of each class name's tokens -> class
  vectors; cross-attention probabilities of the class tokens (softmax over all prompt
  tokens, heads averaged) -> class attention. A name's tokens are averaged.

The original processors are put back when the ``capture_block`` context exits, also on error.
With ``stop_after`` the pass ends at the block: the layers after it are not computed.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from pdmtrack.errors import InputError


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
        raise InputError("--model", "the UNet has no cross-attention transformer block in its up-blocks")
    last_up = max(int(name.split(".")[1]) for name in up_blocks)
    return [name for name in up_blocks if int(name.split(".")[1]) == last_up][-1]


def resolve_block(unet: torch.nn.Module, name: str | None) -> str:
    """``name`` if it is an attention block of ``unet``; the default block when None."""
    if name is None:
        return default_block(unet)
    valid = attention_blocks(unet)
    if name not in valid:
        problem = f"'{name}' is not a transformer block with cross-attention; valid blocks: {', '.join(valid)}"
        raise InputError("--layer", problem)
    return name


@dataclass
class BlockCapture:
    """What one UNet pass left at the hooked block (tokens last: (B, N, C)).

    appearance: (B, N, C1); semantic: (B, N, C2); class_vectors: (K, C2) or None;
    class_attention: (B, N, K) or None. Filled by the processors, None before the pass.
    """

    appearance: torch.Tensor | None = None
    semantic: torch.Tensor | None = None
    class_vectors: torch.Tensor | None = None
    class_attention: torch.Tensor | None = None


def _merge_name_tokens(tensor: torch.Tensor, groups: Sequence[Sequence[int]]) -> torch.Tensor:
    """Average ``tensor[..., tokens, :]`` over each group's token positions -> (..., K, C)."""
    return torch.stack([tensor[..., list(tokens), :].mean(dim=-2) for tokens in groups], dim=-2)


class _CaptureProcessor:
    """Diffusers attention processor (AttnProcessor2_0's computation) that records tensors."""

    def __init__(self, capture: BlockCapture, role: str, class_tokens: Sequence[Sequence[int]]) -> None:
        self.capture = capture
        self.role = role  # "self" (attn1) or "cross" (attn2)
        self.class_tokens = class_tokens

    def __call__(
        self,
        attn,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        **kwargs,
    ) -> torch.Tensor:
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        spatial_shape = hidden_states.shape if hidden_states.ndim == 4 else None
        if spatial_shape is not None:
            hidden_states = hidden_states.flatten(2).transpose(1, 2)
        batch = hidden_states.shape[0]
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, context.shape[1], batch)
            attention_mask = attention_mask.view(batch, attn.heads, -1, attention_mask.shape[-1])
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        if encoder_hidden_states is None:
            context = hidden_states
        elif attn.norm_cross:
            context = attn.norm_encoder_hidden_states(context)

        query, key, value = attn.to_q(hidden_states), attn.to_k(context), attn.to_v(context)
        self._record(query, key)

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(batch, -1, attn.heads, t.shape[-1] // attn.heads).transpose(1, 2)

        query, key, value = heads(query), heads(key), heads(value)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        if self.role == "cross" and self.class_tokens:
            self._record_class_attention(query, key, attention_mask, attn.scale)
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask, dropout_p=0.0)
        out = out.transpose(1, 2).reshape(batch, -1, out.shape[1] * out.shape[-1]).to(query.dtype)
        out = attn.to_out[1](attn.to_out[0](out))
        if spatial_shape is not None:
            out = out.transpose(-1, -2).reshape(spatial_shape)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor

    def _record(self, query: torch.Tensor, key: torch.Tensor) -> None:
        if self.role == "self":
            self.capture.appearance = (query + key) / 2
            return
        self.capture.semantic = query
        if self.class_tokens:
            # The prompt is the same for every frame: its keys are too; keep frame 0's.
            self.capture.class_vectors = _merge_name_tokens(key[0], self.class_tokens)

    def _record_class_attention(self, query, key, attention_mask, scale: float) -> None:
        logits = (query.float() @ key.float().transpose(-1, -2)) * scale  # (B, heads, N, T)
        if attention_mask is not None:
            logits = logits + attention_mask.float()
        probs = logits.softmax(dim=-1).mean(dim=1)  # (B, N, T)
        self.capture.class_attention = _merge_name_tokens(probs.unsqueeze(-1), self.class_tokens).squeeze(-1)


class _BlockReached(Exception):
    """Raised after the hooked block to end a pass whose remaining layers are not needed."""


def _stop_pass(module: torch.nn.Module, args: tuple, output: torch.Tensor) -> None:
    raise _BlockReached


@contextmanager
def capture_block(
    unet: torch.nn.Module, block: str, class_tokens: Sequence[Sequence[int]] = (), stop_after: bool = False
) -> Iterator[BlockCapture]:
    """Within the context, every UNet pass records PDM's tensors at ``block``.

    class_tokens: per class name, the prompt token positions of that name (empty: no class).
    stop_after: end the pass right after ``block`` (the rest of the UNet is not computed; the
    context then exits quietly, skipping whatever follows the pass inside it).
    """
    module = unet.get_submodule(block)
    capture = BlockCapture()
    swapped = [(module.attn1, "self"), (module.attn2, "cross")]
    originals = [attn.processor for attn, _ in swapped]
    stopper = module.register_forward_hook(_stop_pass) if stop_after else None
    try:
        for attn, role in swapped:
            attn.set_processor(_CaptureProcessor(capture, role, class_tokens))
        yield capture
    except _BlockReached:
        pass
    finally:
        if stopper is not None:
            stopper.remove()
        for (attn, _), original in zip(swapped, originals):
            attn.set_processor(original)
