"""Find the repeated blocks of a model (its trunk) from module paths, so depth rules compare like with like.

A transformer's first layer (the embedding) and last layer (the vocabulary head) are not blocks of
the same kind: the head's gradient shrinks like 1/sqrt(vocab), so first-vs-last ratios mislabel
healthy models. The blocks of a ``ModuleList``/``Sequential`` trunk (``transformer.h.{i}``,
``model.layers.{i}``, ResNet ``layer{s}.{i}``, stacked RNN ``weight_ih_l{k}``) are comparable.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

# PyTorch's stacked RNN parameters: weight_ih_l0, bias_hh_l2_reverse, weight_hr_l1 (LSTM projections).
_RNN_PARAM = re.compile(r"^(?:weight|bias)_(?:ih|hh|hr)_l(\d+)(?:_reverse)?$")
# A stage name such as ResNet's layer1..layer4 or stage2: a word followed by its number.
_STAGE = re.compile(r"^([A-Za-z_]+?)(\d+)$")
# A second trunk (T5's decoder beside its encoder) must have at least this share of the first's blocks.
SECOND_TRUNK_SHARE = 0.5


@dataclass(frozen=True)
class Block:
    """One repeated block: its module path and the indices of its layers, in depth order."""

    name: str
    layers: tuple[int, ...]
    signature: tuple[tuple[str, str], ...]  # (path inside the block, type) per layer: its kind


@dataclass(frozen=True)
class Trunk:
    """Blocks of one stack in depth order; name is the pattern they share (``transformer.h``, ``layer*``)."""

    name: str
    blocks: tuple[Block, ...]


@dataclass(frozen=True)
class BlockStructure:
    """The trunks found, and the layers outside every block (embeddings, heads, stems)."""

    trunks: tuple[Trunk, ...]
    outside: tuple[int, ...]


def _pattern(segments: Sequence[str]) -> str:
    """Spell a prefix with its indices and stage numbers as '*', so stages of one stack share it."""
    out = []
    for seg in segments:
        if seg.isdigit():
            out.append("*")
        else:
            stage = _STAGE.match(seg)
            out.append(f"{stage.group(1)}*" if stage else seg)
    return ".".join(out)


def _candidates(name: str) -> list[tuple[str, str, str]]:
    """(trunk pattern, block path, path inside the block) for every index position in a name."""
    segments = name.split(".") if name else []
    found = []
    for pos, seg in enumerate(segments):
        if seg.isdigit():
            found.append((_pattern(segments[:pos]), ".".join(segments[: pos + 1]), ".".join(segments[pos + 1 :])))
    rnn = _RNN_PARAM.match(segments[-1]) if segments else None
    if rnn:
        prefix = ".".join(segments[:-1])
        found.append((prefix, f"{prefix}.*_l{rnn.group(1)}", segments[-1]))
    return found


def _nested(a: str, b: str) -> bool:
    """True when one block path contains the other (or they are the same block)."""
    return a == b or a.startswith(b + ".") or b.startswith(a + ".")


def _repeats(blocks: list[str]) -> int:
    """How many distinct indices the stack's own numeric child takes (inner stacks repeat few)."""
    return len({block.rsplit(".", 1)[-1] for block in blocks})


def _choose_trunks(blocks_by_pattern: dict[str, list[str]]) -> list[str]:
    """The pattern whose index repeats most (outermost on ties), plus disjoint stacks nearly as long.

    Ranking by distinct indices rather than by blocks keeps T5's per-block sub-layers
    (``block.*.layer.{0,1}``, repeated in every block) from outnumbering the block stack itself.
    """
    ranked = sorted(
        blocks_by_pattern,
        key=lambda p: (-_repeats(blocks_by_pattern[p]), p.count("."), -len(blocks_by_pattern[p]), p),
    )
    chosen: list[str] = []
    for pattern in ranked:
        repeats = _repeats(blocks_by_pattern[pattern])
        if repeats < 2 or (chosen and repeats < SECOND_TRUNK_SHARE * _repeats(blocks_by_pattern[chosen[0]])):
            break
        taken = [b for p in chosen for b in blocks_by_pattern[p]]
        if not any(_nested(block, other) for block in blocks_by_pattern[pattern] for other in taken):
            chosen.append(pattern)
    return chosen


def find_blocks(names: Sequence[str], types: Sequence[str] | None = None) -> BlockStructure:
    """Group layer (or parameter) names, given in depth order, into trunks of repeated blocks."""
    kinds = list(types) if types is not None else [""] * len(names)
    blocks_by_pattern: dict[str, list[str]] = {}
    membership: list[list[tuple[str, str, str]]] = []
    for name in names:
        found = _candidates(name)
        membership.append(found)
        for pattern, block, _ in found:
            seen = blocks_by_pattern.setdefault(pattern, [])
            if block not in seen:
                seen.append(block)
    trunks: list[Trunk] = []
    used: set[int] = set()
    for pattern in _choose_trunks(blocks_by_pattern):
        layers: dict[str, list[tuple[int, str]]] = {}
        for index, found in enumerate(membership):
            for cand_pattern, block, inner in found:
                if cand_pattern == pattern:
                    layers.setdefault(block, []).append((index, inner))
                    used.add(index)
        built = tuple(
            Block(block, tuple(i for i, _ in members), tuple((inner, kinds[i]) for i, inner in members))
            for block, members in layers.items()
        )
        trunks.append(Trunk(pattern, built))
    trunks.sort(key=lambda t: t.blocks[0].layers[0])
    outside = tuple(i for i in range(len(names)) if i not in used)
    return BlockStructure(tuple(trunks), outside)
