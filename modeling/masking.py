"""Mask samplers for the three modalities (data2vec 1.0).

- audio: random spans over time (wav2vec 2.0 / fairseq ``compute_mask_indices``, "static" lengths);
- vision: BEiT block-wise masking;
- text: BERT-style masking with the 80/10/10 split and optional spans (fairseq's
  ``mask_multiple_length``, which the released data2vec text config sets to 4 and which
  ``transformers.DataCollatorForLanguageModeling`` does not offer).

All samplers take an optional ``torch.Generator`` so draws are reproducible.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


def _uniform(generator: torch.Generator | None) -> float:
    return torch.rand((), generator=generator).item()


def _randint(low: int, high: int, generator: torch.Generator | None) -> int:
    """Integer in [low, high] (inclusive)."""
    return int(torch.randint(low, high + 1, (), generator=generator).item())


def compute_span_mask(
    shape: tuple[int, int],
    mask_prob: float,
    mask_length: int,
    attention_mask: torch.Tensor | None = None,
    min_masks: int = 1,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Boolean (B x T) mask made of spans of ``mask_length`` steps.

    Each row of real length L gets ``int(mask_prob * L / mask_length + u)`` span starts (u uniform,
    i.e. probabilistic rounding, at least ``min_masks``) drawn without replacement from the starts
    whose span fits inside the row; spans may overlap, so about ``1 - exp(-mask_prob)`` of the steps
    end up masked (≈ 48% for the released 0.65 / 10). Padding (``attention_mask == 0``) is never masked.
    """
    batch_size, seq_len = shape
    if mask_length < 1:
        raise ValueError(f"mask_length must be >= 1, got {mask_length}")
    if not 0.0 <= mask_prob <= 1.0:
        raise ValueError(f"mask_prob must be in [0, 1], got {mask_prob}")
    lengths = attention_mask.long().sum(-1).tolist() if attention_mask is not None else [seq_len] * batch_size
    mask = torch.zeros(batch_size, seq_len, dtype=torch.bool)
    for row, length in enumerate(lengths):
        num_starts = length - mask_length + 1
        if num_starts <= 0:
            continue  # row shorter than one span: nothing can be masked without touching padding
        num_spans = int(mask_prob * length / mask_length + _uniform(generator))
        num_spans = min(max(num_spans, min_masks), num_starts)
        starts = torch.randperm(num_starts, generator=generator)[:num_spans]
        positions = (starts[:, None] + torch.arange(mask_length)[None, :]).flatten()
        mask[row, positions] = True
    return mask.to(device) if device is not None else mask


def trim_to_same_count(mask: torch.Tensor, generators: list[torch.Generator | None]) -> torch.Tensor:
    """fairseq's ``require_same_masks``: every row keeps a random subset of its masked steps, as many
    as the row with the fewest (drawn from the row's own generator; spans may be cut)."""
    counts = mask.sum(-1)
    target = int(counts.min())
    mask = mask.clone()
    for row, (count, generator) in enumerate(zip(counts.tolist(), generators)):
        if count > target:
            positions = mask[row].nonzero().squeeze(-1)
            drop = positions[torch.randperm(count, generator=generator)[target:]]
            mask[row, drop] = False
    return mask


@dataclass
class BlockMaskGenerator:
    """BEiT block-wise masking over a ``height x width`` patch grid.

    Rectangles of ``min_num_patches``..``max_num_patches`` patches with aspect ratio in
    [``min_aspect``, 1/``min_aspect``] are added until ``num_masking_patches`` patches are masked or no
    rectangle fits any more (then a few fewer may be masked, as in BEiT); at least one patch is masked.
    """

    height: int
    width: int
    num_masking_patches: int
    min_num_patches: int = 16
    max_num_patches: int | None = None
    min_aspect: float = 0.3
    max_aspect: float | None = None

    def __post_init__(self):
        total = self.height * self.width
        if not 0 < self.num_masking_patches <= total:
            raise ValueError(f"num_masking_patches must be in [1, {total}], got {self.num_masking_patches}")
        self.max_num_patches = self.max_num_patches or self.num_masking_patches
        self.min_num_patches = min(self.min_num_patches, self.num_masking_patches)
        max_aspect = self.max_aspect or 1.0 / self.min_aspect
        self._log_aspect = (math.log(self.min_aspect), math.log(max_aspect))

    def _add_block(self, mask: torch.Tensor, max_patches: int, generator, blocks: list) -> int:
        for _ in range(10):
            target_area = self.min_num_patches + _uniform(generator) * (max_patches - self.min_num_patches)
            log_ratio = self._log_aspect[0] + _uniform(generator) * (
                self._log_aspect[1] - self._log_aspect[0]
            )
            aspect = math.exp(log_ratio)
            h = int(round(math.sqrt(target_area * aspect)))
            w = int(round(math.sqrt(target_area / aspect)))
            if 0 < h <= self.height and 0 < w <= self.width:
                top = _randint(0, self.height - h, generator)
                left = _randint(0, self.width - w, generator)
                newly = h * w - int(mask[top : top + h, left : left + w].sum())
                if 0 < newly <= max_patches:
                    mask[top : top + h, left : left + w] = True
                    blocks.append((top, left, h, w))
                    return newly
        return 0

    def sample(self, generator: torch.Generator | None = None, return_blocks: bool = False):
        """One (height x width) boolean mask; with ``return_blocks`` also the (top, left, h, w) rectangles."""
        mask = torch.zeros(self.height, self.width, dtype=torch.bool)
        blocks: list[tuple[int, int, int, int]] = []
        count = 0
        while count < self.num_masking_patches:
            max_patches = min(self.num_masking_patches - count, self.max_num_patches)
            added = self._add_block(mask, max_patches, generator, blocks)
            if added == 0:
                break
            count += added
        if count == 0:
            top, left = _randint(0, self.height - 1, generator), _randint(0, self.width - 1, generator)
            mask[top, left] = True
            blocks.append((top, left, 1, 1))
        return (mask, blocks) if return_blocks else mask

    def __call__(self, batch_size: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Boolean (batch_size x height*width) masks, flattened row-major like the patch sequence."""
        return torch.stack([self.sample(generator).flatten() for _ in range(batch_size)])


def mask_tokens(
    input_ids: torch.Tensor,
    special_tokens_mask: torch.Tensor,
    mask_token_id: int,
    vocab_size: int,
    mlm_probability: float = 0.15,
    mask_replace_prob: float = 0.8,
    random_replace_prob: float = 0.1,
    span_length: int = 1,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT-style masking. Returns ``(masked_input_ids, labels)`` like
    ``DataCollatorForLanguageModeling``: labels carry the original id at selected positions, -100 elsewhere.

    About ``mlm_probability`` of the maskable tokens are selected, as single tokens or, with
    ``span_length`` > 1, as runs of that many tokens (starts drawn with probability
    ``mlm_probability / span_length``). Of the selected tokens ``mask_replace_prob`` become the mask
    token, ``random_replace_prob`` a random token, the rest stay unchanged. Positions flagged in
    ``special_tokens_mask`` (specials and padding) are never selected.
    """
    if mask_replace_prob + random_replace_prob > 1.0 + 1e-9:
        raise ValueError("mask_replace_prob + random_replace_prob must not exceed 1")
    maskable = ~special_tokens_mask.bool()
    device = input_ids.device
    rand = torch.rand(input_ids.shape, generator=generator).to(device)
    if span_length <= 1:
        selected = (rand < mlm_probability) & maskable
    else:
        starts = (rand < mlm_probability / span_length) & maskable
        selected = starts.clone()
        for offset in range(1, span_length):
            selected[:, offset:] |= starts[:, :-offset]
        selected &= maskable
    labels = torch.where(selected, input_ids, torch.full_like(input_ids, -100))
    choice = torch.rand(input_ids.shape, generator=generator).to(device)
    to_mask = selected & (choice < mask_replace_prob)
    to_random = selected & ~to_mask & (choice < mask_replace_prob + random_replace_prob)
    masked = input_ids.clone()
    masked[to_mask] = mask_token_id
    random_ids = torch.randint(vocab_size, input_ids.shape, generator=generator).to(device)
    masked[to_random] = random_ids[to_random]
    return masked, labels


def block_mask(
    grid: tuple[int, ...],
    mask_prob: float,
    block_size: int,
    inverse: bool = False,
    prob_adjust: float = 0.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """data2vec 2.0 (inverse) block masking over a 1-D (``(length,)``) or 2-D (``(height, width)``) grid.

    Blocks of ``block_size`` (per side) are placed around random centres and clipped at the borders;
    with ``inverse`` the blocks mark the *kept* positions and everything else is masked. The selection
    is then trimmed or topped up at random so that exactly ``int(N * p)`` positions are selected, where
    ``p = mask_prob`` (or ``1 - mask_prob`` with ``inverse``) and N the grid size — every sample of a
    batch has the same number of masked positions, which the 2.0 student needs to drop them.
    ``prob_adjust`` over-samples centres, as fairseq's ``mask_prob_adjust`` does. Returns a flat
    boolean mask (True = masked) in row-major order.
    """
    if not 0.0 < mask_prob < 1.0:
        raise ValueError(f"mask_prob must be in (0, 1), got {mask_prob}")
    size = math.prod(grid)
    select_prob = 1.0 - mask_prob if inverse else mask_prob
    target = int(size * select_prob)
    selected = torch.zeros(grid, dtype=torch.bool)
    if block_size <= 1:
        num_centres = 0
    else:
        num_centres = int(size * (select_prob + prob_adjust) / block_size ** len(grid))
    if num_centres > 0:
        centres = torch.randint(0, size, (num_centres,), generator=generator)
        coords = torch.unravel_index(centres, grid)
        offsets = torch.arange(block_size) - block_size // 2
        if len(grid) == 1:
            rows = (coords[0][:, None] + offsets[None, :]).clamp_(0, grid[0] - 1)
            selected[rows.flatten()] = True
        else:
            rows = (coords[0][:, None, None] + offsets[None, :, None]).clamp_(0, grid[0] - 1)
            cols = (coords[1][:, None, None] + offsets[None, None, :]).clamp_(0, grid[1] - 1)
            rows, cols = torch.broadcast_tensors(rows, cols)
            selected[rows.flatten(), cols.flatten()] = True
    selected = selected.flatten()
    count = int(selected.sum())
    if count > target:  # drop random selected positions
        drop = torch.nonzero(selected).flatten()[torch.randperm(count, generator=generator)[: count - target]]
        selected[drop] = False
    elif count < target:  # add random unselected positions
        free = torch.nonzero(~selected).flatten()
        selected[free[torch.randperm(len(free), generator=generator)[: target - count]]] = True
    return ~selected if inverse else selected


def random_token_mask(
    length: int,
    mask_prob: float,
    padding: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """MAE-style random masking of exactly ``length - int(length * (1 - mask_prob))`` positions
    (data2vec 2.0 text, mask length 1). Padding positions (``padding`` True) are masked last."""
    num_keep = int(length * (1 - mask_prob))
    noise = torch.rand(length, generator=generator)
    if padding is not None:
        noise = noise.masked_fill(padding.bool(), -1.0)  # low noise = kept first
    mask = torch.ones(length, dtype=torch.bool)
    mask[noise.argsort()[:num_keep]] = False
    return mask
