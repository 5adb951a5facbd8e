"""Statistical and structural tests of the three mask samplers in ``data2vec_hf.masking``.

Every draw uses a seeded ``torch.Generator``; statistical checks compare empirical frequencies over
many draws with analytically computed expectations (the oracles below), with tolerances of several
standard errors, so they are deterministic and would still pass for other seeds.
"""

from __future__ import annotations

import math

import pytest
import torch
from data2vec_hf.masking import BlockMaskGenerator, compute_span_mask, mask_tokens


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _runs(row: torch.Tensor) -> list[tuple[int, int]]:
    """Maximal runs of True in a 1-D boolean tensor as (start, length)."""
    runs, start = [], None
    for i, value in enumerate(row.tolist() + [False]):
        if value and start is None:
            start = i
        elif not value and start is not None:
            runs.append((start, i - start))
            start = None
    return runs


# --------------------------------------------------------------------------------------------------
# Audio: random spans
# --------------------------------------------------------------------------------------------------


def span_coverage_oracle(length: int, mask_prob: float, mask_length: int, min_masks: int) -> list[float]:
    """Exact P(position i is masked) for a row of real length ``length``.

    n = int(p*L/len + u), u ~ U[0, 1) is floor(x) with probability 1 - frac(x) and floor(x) + 1 with
    probability frac(x); it is clamped to [min_masks, S] with S = L - len + 1 possible starts, and the
    n starts are drawn without replacement. Position i is covered by c_i starts, so it stays unmasked
    with probability C(S - c_i, n) / C(S, n).
    """
    num_starts = length - mask_length + 1
    if num_starts <= 0:
        return [0.0] * length
    x = mask_prob * length / mask_length
    low = math.floor(x)
    frac = x - low
    probs = [0.0] * length
    for n, weight in ((low, 1.0 - frac), (low + 1, frac)):
        if weight == 0.0:
            continue
        n = min(max(n, min_masks), num_starts)
        for i in range(length):
            covering = min(i, num_starts - 1) - max(0, i - mask_length + 1) + 1
            probs[i] += weight * (1.0 - math.comb(num_starts - covering, n) / math.comb(num_starts, n))
    return probs


@pytest.mark.parametrize(
    "length, mask_prob, mask_length, min_masks",
    [
        (30, 0.3, 5, 1),  # n in {1, 2}
        (40, 0.65, 4, 1),  # heavy overlap
        (12, 1.0, 5, 1),  # few starts (S = 8), n in {2, 3}
        (30, 0.05, 5, 2),  # min_masks clamp: n in {0, 1} -> 2
    ],
)
def test_span_mask_matches_exact_per_position_probabilities(length, mask_prob, mask_length, min_masks):
    draws = 3000
    mask = compute_span_mask((draws, length), mask_prob, mask_length, min_masks=min_masks, generator=_gen(1))
    assert mask.shape == (draws, length) and mask.dtype == torch.bool
    expected = torch.tensor(span_coverage_oracle(length, mask_prob, mask_length, min_masks))
    empirical = mask.double().mean(0)
    # per position: binomial standard error <= 0.5 / sqrt(3000) ~ 0.009; 0.045 is 5 of them. This
    # catches a wrong start range (e.g. fairseq's off-by-one that never masks the last step).
    assert torch.allclose(empirical, expected.double(), atol=0.045), (empirical, expected)
    # overall fraction: much tighter
    assert abs(empirical.mean().item() - expected.mean().item()) < 0.01
    # the first and the last step can both be masked
    assert mask[:, 0].any() and mask[:, -1].any()


def test_span_mask_released_audio_values_mask_about_half():
    """fairseq v1 audio: mask_prob 0.65, length 10 -> about 49% of the frames are masked."""
    length, draws = 500, 400
    expected = sum(span_coverage_oracle(length, 0.65, 10, 1)) / length
    assert 0.47 < expected < 0.50
    # the long-sequence limit is 1 - exp(-0.65) ~ 0.478; edge effects push a 500-frame row above it
    assert expected > 1 - math.exp(-0.65)
    mask = compute_span_mask((draws, length), 0.65, 10, generator=_gen(2))
    assert abs(mask.float().mean().item() - expected) < 0.01


def test_span_mask_number_of_spans_per_row():
    """Without overlaps being possible to hide, count spans: p=0 gives exactly ``min_masks`` spans."""
    mask = compute_span_mask((200, 50), 0.0, 5, min_masks=1, generator=_gen(3))
    assert (mask.sum(-1) == 5).all()
    for row in mask:
        assert [length for _, length in _runs(row)] == [5]
    assert not compute_span_mask((20, 50), 0.0, 5, min_masks=0, generator=_gen(3)).any()
    # more spans requested than starts exist: every start is used, the whole row is masked
    assert compute_span_mask((4, 8), 0.1, 3, min_masks=100, generator=_gen(3)).all()


def test_span_mask_runs_are_unions_of_whole_spans():
    mask = compute_span_mask((300, 60), 0.5, 7, generator=_gen(4))
    assert mask.any()
    for row in mask:
        runs = _runs(row)
        assert runs, "min_masks=1 guarantees a span in every row"
        assert all(length >= 7 for _, length in runs)


def test_span_mask_never_masks_padding():
    batch, seq_len, span = 400, 40, 6
    gen = _gen(5)
    lengths = torch.randint(0, seq_len + 1, (batch,), generator=gen)
    lengths[:4] = torch.tensor([0, span - 1, span, seq_len])
    attention_mask = (torch.arange(seq_len)[None, :] < lengths[:, None]).long()
    mask = compute_span_mask((batch, seq_len), 0.5, span, attention_mask=attention_mask, generator=gen)
    assert not (mask & (attention_mask == 0)).any()
    short = lengths < span
    assert not mask[short].any(), "rows shorter than one span get nothing"
    assert mask[~short].any(-1).all(), "every row that fits a span gets at least one"
    assert (mask[2].sum() == span) and mask[2, :span].all()
    # rows are masked like unpadded rows of their own length: fraction follows the per-length oracle
    expected = sum(sum(span_coverage_oracle(int(n), 0.5, span, 1)) for n in lengths.tolist())
    assert abs(mask.sum().item() - expected) / lengths.sum().item() < 0.02
    # an attention mask that is all ones is the same as none
    full = torch.ones(8, seq_len, dtype=torch.long)
    assert torch.equal(
        compute_span_mask((8, seq_len), 0.5, span, attention_mask=full, generator=_gen(6)),
        compute_span_mask((8, seq_len), 0.5, span, generator=_gen(6)),
    )


def test_span_mask_rejects_bad_arguments():
    with pytest.raises(ValueError):
        compute_span_mask((2, 10), 0.5, 0)
    with pytest.raises(ValueError):
        compute_span_mask((2, 10), 1.5, 2)
    with pytest.raises(ValueError):
        compute_span_mask((2, 10), -0.1, 2)


# --------------------------------------------------------------------------------------------------
# Vision: BEiT block-wise masking
# --------------------------------------------------------------------------------------------------


def _beit_14():
    # data2vec vision: 14 x 14 patches (224 px / 16), 60% masked (118 of 196), >= 16 patches per block
    return BlockMaskGenerator(14, 14, num_masking_patches=118, min_num_patches=16)


def _aspect_area_feasible(h, w, min_area, max_area, min_aspect, max_aspect, eps=1e-9) -> bool:
    """Whether some target area A in [min_area, max_area] and aspect r in [min_aspect, max_aspect]
    give h = round(sqrt(A r)) and w = round(sqrt(A / r)).

    In log space x = log(A r) in [2 log(h - .5), 2 log(h + .5)], y = log(A / r) likewise for w; the
    constraints on A and r bound x + y and x - y. Two convex polygons intersect iff their projections
    overlap on every edge normal (x, y, x + y, x - y)."""
    x1, x2 = 2 * math.log(h - 0.5), 2 * math.log(h + 0.5)
    y1, y2 = 2 * math.log(w - 0.5) if w > 0.5 else -math.inf, 2 * math.log(w + 0.5)
    if h <= 0.5:
        x1 = -math.inf
    u1, u2 = 2 * math.log(min_area), 2 * math.log(max_area)  # u = x + y = 2 log A
    v1, v2 = 2 * math.log(min_aspect), 2 * math.log(max_aspect)  # v = x - y = 2 log r

    def overlap(a1, a2, b1, b2):
        return a1 <= b2 + eps and b1 <= a2 + eps

    return (
        overlap(x1, x2, (u1 + v1) / 2, (u2 + v2) / 2)
        and overlap(y1, y2, (u1 - v2) / 2, (u2 - v1) / 2)
        and overlap(x1 + y1, x2 + y2, u1, u2)
        and overlap(x1 - y2, x2 - y1, v1, v2)
    )


@pytest.mark.parametrize(
    "sampler",
    [
        _beit_14(),
        BlockMaskGenerator(14, 14, num_masking_patches=118, min_num_patches=16, max_num_patches=40),
        BlockMaskGenerator(10, 16, num_masking_patches=64, min_num_patches=4, min_aspect=0.5, max_aspect=3.0),
        BlockMaskGenerator(6, 6, num_masking_patches=30, min_num_patches=16),
    ],
)
def test_block_mask_is_union_of_valid_rectangles(sampler):
    gen = _gen(10)
    max_aspect = sampler.max_aspect or 1.0 / sampler.min_aspect
    for _ in range(60):
        mask, blocks = sampler.sample(gen, return_blocks=True)
        assert mask.shape == (sampler.height, sampler.width) and mask.dtype == torch.bool
        assert blocks
        replay = torch.zeros_like(mask)
        count = 0
        for top, left, h, w in blocks:
            assert h >= 1 and w >= 1
            assert 0 <= top and top + h <= sampler.height and 0 <= left and left + w <= sampler.width
            newly = h * w - int(replay[top : top + h, left : left + w].sum())
            max_patches = min(sampler.num_masking_patches - count, sampler.max_num_patches)
            # each block adds at least one new patch and never more than allowed at that point
            assert 0 < newly <= max_patches
            # (h, w) come from rounding sqrt(A r), sqrt(A / r) with A, r in the configured ranges
            # (the target area is drawn between min_num_patches and max_patches, whichever is larger)
            # (or it is the single-patch fallback when no rectangle fitted at all)
            low, high = sorted((sampler.min_num_patches, max_patches))
            fallback = blocks == [(top, left, 1, 1)]
            assert fallback or _aspect_area_feasible(h, w, low, high, sampler.min_aspect, max_aspect), (
                h,
                w,
                max_patches,
            )
            replay[top : top + h, left : left + w] = True
            count += newly
        assert torch.equal(replay, mask), "the mask is exactly the union of the returned rectangles"
        assert int(mask.sum()) == count
        assert 1 <= count <= sampler.num_masking_patches


def test_block_mask_aspect_ratios_cover_configured_range():
    """Blocks are not all square: both tall and wide rectangles appear, and none far outside range."""
    sampler = _beit_14()
    gen = _gen(11)
    ratios, first_ratios = [], []
    for _ in range(100):
        _, blocks = sampler.sample(gen, return_blocks=True)
        ratios += [h / w for _, _, h, w in blocks]
        first_ratios.append(blocks[0][2] / blocks[0][3])
    assert min(ratios) < 0.6 and max(ratios) > 1 / 0.6
    # the first block has area >= 16, where rounding sqrt(16 r) can stretch 1/0.3 to at most ~4.6
    # (later blocks may be smaller, and rounding stretches them more; the test above bounds those)
    assert 1 / 4.7 < min(first_ratios) and max(first_ratios) < 4.7
    assert min(first_ratios) < 0.5 and max(first_ratios) > 2


def test_block_mask_fraction_close_to_target():
    sampler = _beit_14()
    gen = _gen(12)
    counts = torch.tensor([int(sampler.sample(gen).sum()) for _ in range(300)], dtype=torch.float)
    assert counts.max() <= 118
    # BEiT stops when no rectangle fits in 10 tries, so it may fall a little short, never by much
    assert counts.mean() > 0.98 * 118, counts.mean()
    assert counts.min() >= 118 - 16


def test_block_mask_always_masks_at_least_one_patch():
    # a 1-row grid where no rectangle of >= 10 patches with aspect in [0.5, 2] fits (h >= 2 always)
    sampler = BlockMaskGenerator(1, 20, num_masking_patches=10, min_num_patches=10, min_aspect=0.5)
    gen = _gen(13)
    seen_columns = set()
    for _ in range(30):
        mask, blocks = sampler.sample(gen, return_blocks=True)
        assert int(mask.sum()) == 1
        assert len(blocks) == 1 and blocks[0][2:] == (1, 1)
        assert mask[blocks[0][0], blocks[0][1]]
        seen_columns.add(blocks[0][1])
    assert len(seen_columns) > 5, "the fallback patch is placed at random"
    # a single patch to mask on a tiny grid
    one = BlockMaskGenerator(2, 2, num_masking_patches=1)
    assert all(int(one.sample(gen).sum()) == 1 for _ in range(20))


def test_block_mask_call_is_flattened_row_major_sample():
    sampler = BlockMaskGenerator(4, 6, num_masking_patches=10, min_num_patches=3)
    batch = sampler(5, _gen(14))
    assert batch.shape == (5, 24) and batch.dtype == torch.bool
    gen = _gen(14)
    expected = [sampler.sample(gen) for _ in range(5)]
    for row, grid in zip(batch, expected, strict=True):
        assert torch.equal(row, grid.flatten())
        assert torch.equal(row.view(4, 6), grid)  # row-major: patch (r, c) is index r * 6 + c
    # the patches vary over the batch
    assert not all(torch.equal(batch[0], row) for row in batch[1:])


def test_block_mask_position_is_not_biased_to_a_corner():
    sampler = _beit_14()
    gen = _gen(15)
    freq = torch.stack([sampler.sample(gen).float() for _ in range(200)]).mean(0)
    quadrants = [freq[:7, :7].mean(), freq[:7, 7:].mean(), freq[7:, :7].mean(), freq[7:, 7:].mean()]
    assert max(quadrants) - min(quadrants) < 0.1, quadrants
    # uniform placement of rectangles covers the border less often than the centre, but every patch,
    # corners included (an off-by-one in the placement range would starve the last row/column)
    assert freq.min() > 0.02
    assert freq[5:9, 5:9].mean() > 0.8
    assert (freq - freq.flip(0)).abs().max() < 0.25 and (freq - freq.flip(1)).abs().max() < 0.25


def test_block_mask_rejects_bad_counts():
    with pytest.raises(ValueError):
        BlockMaskGenerator(4, 4, num_masking_patches=0)
    with pytest.raises(ValueError):
        BlockMaskGenerator(4, 4, num_masking_patches=17)


# --------------------------------------------------------------------------------------------------
# Text: BERT-style masking
# --------------------------------------------------------------------------------------------------

PAD, CLS, SEP, MASK = 0, 1, 2, 3
VOCAB = 1000


def _text_batch(batch: int, seq_len: int, seed: int):
    """``<s> tokens </s> <pad>...`` rows of random lengths; returns ids and the special-tokens mask."""
    gen = _gen(seed)
    lengths = torch.randint(3, seq_len + 1, (batch,), generator=gen)
    lengths[0] = seq_len
    ids = torch.randint(4, VOCAB, (batch, seq_len), generator=gen)
    positions = torch.arange(seq_len)[None, :]
    ids[:, 0] = CLS
    ids[positions == (lengths[:, None] - 1)] = SEP
    ids[positions >= lengths[:, None]] = PAD
    special = (ids == PAD) | (ids == CLS) | (ids == SEP)
    return ids, special


def _text_selection_oracle(special: torch.Tensor, mlm_probability: float, span_length: int) -> torch.Tensor:
    """Exact P(selected) per position: starts are i.i.d. Bernoulli(p / k) at maskable positions and
    cover the next k positions, so a maskable position i is selected unless none of the m_i maskable
    positions among i-k+1..i starts a span; 1 - (1 - p/k)^m_i."""
    maskable = (~special).double()
    if span_length <= 1:
        return maskable * mlm_probability
    q = mlm_probability / span_length
    counts = maskable.clone()
    for offset in range(1, span_length):
        counts[:, offset:] += maskable[:, :-offset]
    return maskable * (1 - (1 - q) ** counts)


def test_text_labels_and_special_tokens():
    ids, special = _text_batch(64, 24, seed=20)
    for span_length in (1, 3):
        masked, labels = mask_tokens(
            ids, special, MASK, VOCAB, 0.3, span_length=span_length, generator=_gen(21)
        )
        assert masked.shape == ids.shape and labels.shape == ids.shape
        assert labels.dtype == ids.dtype and masked.dtype == ids.dtype
        selected = labels != -100
        assert selected.any()
        assert not (selected & special).any(), "special and padding tokens are never selected"
        assert torch.equal(labels[selected], ids[selected])
        assert (labels[~selected] == -100).all()
        assert torch.equal(masked[~selected], ids[~selected]), "only selected tokens are changed"
        assert ((masked >= 0) & (masked < VOCAB)).all()
    assert torch.equal(ids, _text_batch(64, 24, seed=20)[0]), "the input is not modified in place"


@pytest.mark.parametrize("span_length", [1, 4])
@pytest.mark.parametrize("mlm_probability", [0.15, 0.5])
def test_text_selected_fraction_matches_oracle(mlm_probability, span_length):
    ids, special = _text_batch(4000, 32, seed=22)
    _, labels = mask_tokens(
        ids, special, MASK, VOCAB, mlm_probability, span_length=span_length, generator=_gen(23)
    )
    selected = labels != -100
    expected = _text_selection_oracle(special, mlm_probability, span_length)
    num_maskable = (~special).sum().item()
    fraction = selected.sum().item() / num_maskable
    expected_fraction = expected.sum().item() / num_maskable
    if span_length == 1:
        assert expected_fraction == pytest.approx(mlm_probability)
    else:
        # overlapping runs and truncation at </s> leave the fraction a bit below p, not far below
        assert 0.75 * mlm_probability < expected_fraction < mlm_probability
    # ~70k maskable tokens: the standard error of the fraction is < 0.002
    assert abs(fraction - expected_fraction) < 0.008, (fraction, expected_fraction)
    # per position (over 4000 rows) the selection frequency follows the oracle too
    per_position = selected.double().mean(0)
    assert torch.allclose(per_position, expected.mean(0), atol=0.04)


def test_text_span_selection_structure():
    """With spans, the selection is made of runs of at least ``span_length`` tokens, except runs cut
    short at the end of the text (</s> and padding are never selected)."""
    ids, special = _text_batch(300, 30, seed=24)
    _, labels = mask_tokens(ids, special, MASK, VOCAB, 0.2, span_length=4, generator=_gen(25))
    selected = labels != -100
    last_maskable = (~special).long().cumsum(-1).argmax(-1)  # index of the last real token
    short_runs = 0
    for row, last in zip(selected, last_maskable.tolist(), strict=True):
        for start, length in _runs(row):
            if start + length - 1 < last:
                assert length >= 4, (row, start, length)
            elif length < 4:
                short_runs += 1
    assert short_runs > 0, "truncated runs at the end of the text do occur"


def test_text_replacement_split():
    ids, special = _text_batch(3000, 32, seed=26)
    masked, labels = mask_tokens(ids, special, MASK, VOCAB, 0.5, 0.8, 0.1, generator=_gen(27))
    selected = labels != -100
    n = selected.sum().item()
    is_mask = (masked == MASK) & selected
    unchanged = (masked == ids) & selected
    other = selected & ~is_mask & ~unchanged
    # a random replacement can hit the mask id or the original id with probability 1/VOCAB each
    assert is_mask.sum().item() / n == pytest.approx(0.8 + 0.1 / VOCAB, abs=0.01)
    assert other.sum().item() / n == pytest.approx(0.1 * (1 - 2 / VOCAB), abs=0.006)
    assert unchanged.sum().item() / n == pytest.approx(0.1 + 0.1 / VOCAB, abs=0.006)
    # random replacements are spread over the vocabulary
    random_ids = masked[other]
    assert random_ids.min() >= 0 and random_ids.max() < VOCAB
    assert random_ids.float().mean().item() == pytest.approx((VOCAB - 1) / 2, rel=0.05)
    # n uniform draws over VOCAB ids hit about VOCAB * (1 - exp(-n / VOCAB)) distinct ids
    expected_distinct = VOCAB * (1 - math.exp(-random_ids.numel() / VOCAB))
    assert random_ids.unique().numel() > 0.9 * expected_distinct
    # the split does not depend on the position: the first and second halves agree
    half = ids.shape[1] // 2
    first = is_mask[:, :half].sum().item() / selected[:, :half].sum().item()
    second = is_mask[:, half:].sum().item() / selected[:, half:].sum().item()
    assert abs(first - second) < 0.02


def test_text_replacement_extremes():
    ids, special = _text_batch(200, 20, seed=28)
    masked, labels = mask_tokens(ids, special, MASK, VOCAB, 0.4, 1.0, 0.0, generator=_gen(29))
    selected = labels != -100
    assert selected.any()
    assert (masked[selected] == MASK).all(), "mask_replace_prob=1: every selected token is [MASK]"
    assert torch.equal(masked[~selected], ids[~selected])
    masked, labels = mask_tokens(ids, special, MASK, VOCAB, 0.4, 0.0, 0.0, generator=_gen(29))
    assert (labels != -100).any()
    assert torch.equal(masked, ids), "mask and random probabilities 0: tokens stay unchanged"
    # everything maskable is selected at probability 1, nothing at 0
    _, labels = mask_tokens(ids, special, MASK, VOCAB, 1.0, generator=_gen(30))
    assert torch.equal(labels != -100, ~special)
    _, labels = mask_tokens(ids, special, MASK, VOCAB, 0.0, span_length=4, generator=_gen(30))
    assert (labels == -100).all()
    with pytest.raises(ValueError):
        mask_tokens(ids, special, MASK, VOCAB, 0.15, 0.8, 0.3)


def _tiny_tokenizer():
    tokenizers = pytest.importorskip("tokenizers")
    transformers = pytest.importorskip("transformers")
    vocab = {"[PAD]": PAD, "[CLS]": CLS, "[SEP]": SEP, "[MASK]": MASK, "[UNK]": 4}
    vocab.update({f"w{i}": 5 + i for i in range(40)})
    model = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="[UNK]"))
    model.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=model,
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        unk_token="[UNK]",
    )


def test_text_convention_matches_transformers_collator():
    """Same inputs/labels convention as ``DataCollatorForLanguageModeling`` (compared where both are
    deterministic: select everything, replace everything / nothing), and the same statistics."""
    tokenizer = _tiny_tokenizer()
    from transformers import DataCollatorForLanguageModeling

    ids, _ = _text_batch(16, 12, seed=31)
    ids = torch.where(ids >= 4, 5 + ids % 40, ids)  # into the tiny vocabulary
    special = torch.tensor(
        [tokenizer.get_special_tokens_mask(row, already_has_special_tokens=True) for row in ids.tolist()]
    ).bool()
    assert special[:, 0].all() and (special == ((ids == PAD) | (ids == CLS) | (ids == SEP))).all()

    for replace in (1.0, 0.0):
        collator = DataCollatorForLanguageModeling(
            tokenizer, mlm_probability=1.0, mask_replace_prob=replace, random_replace_prob=0.0, seed=0
        )
        ref_inputs, ref_labels = collator.torch_mask_tokens(ids.clone())
        inputs, labels = mask_tokens(ids, special, tokenizer.mask_token_id, len(tokenizer), 1.0, replace, 0.0)
        assert torch.equal(labels, ref_labels) and labels.dtype == ref_labels.dtype
        assert torch.equal(inputs, ref_inputs)

    # statistically: the same selected fraction and split as the collator's 15% / 80 / 10 / 10
    big, _ = _text_batch(2000, 24, seed=32)
    big = torch.where(big >= 4, 5 + big % 40, big)
    big_special = (big == PAD) | (big == CLS) | (big == SEP)
    collator = DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.15, seed=1)
    ref_inputs, ref_labels = collator.torch_mask_tokens(big.clone(), special_tokens_mask=big_special.long())
    inputs, labels = mask_tokens(big, big_special, MASK, len(tokenizer), 0.15, generator=_gen(33))
    ref_sel, sel = ref_labels != -100, labels != -100
    for ours, theirs in ((inputs, ref_inputs), (sel, ref_sel)):
        assert not (ours[big_special] != theirs[big_special]).any()
    assert abs(sel.float().mean() - ref_sel.float().mean()) < 0.01
    ref_mask = ((ref_inputs == MASK) & ref_sel).sum() / ref_sel.sum()
    our_mask = ((inputs == MASK) & sel).sum() / sel.sum()
    assert abs(our_mask - ref_mask) < 0.03


# --------------------------------------------------------------------------------------------------
# Reproducibility
# --------------------------------------------------------------------------------------------------


def _draw_all(seed: int):
    ids, special = _text_batch(8, 16, seed=40)
    return (
        compute_span_mask((6, 50), 0.5, 5, generator=_gen(seed)),
        _beit_14()(4, _gen(seed)),
        *mask_tokens(ids, special, MASK, VOCAB, 0.3, span_length=2, generator=_gen(seed)),
    )


def test_seeded_draws_are_reproducible():
    first, again, other = _draw_all(7), _draw_all(7), _draw_all(8)
    for a, b, c in zip(first, again, other, strict=True):
        assert torch.equal(a, b)
        assert not torch.equal(a, c)


def test_generator_advances_between_calls():
    gen = _gen(9)
    assert not torch.equal(
        compute_span_mask((4, 40), 0.5, 4, generator=gen), compute_span_mask((4, 40), 0.5, 4, generator=gen)
    )
    sampler = _beit_14()
    assert not torch.equal(sampler.sample(gen), sampler.sample(gen))
