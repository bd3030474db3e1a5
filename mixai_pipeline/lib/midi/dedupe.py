"""Loop deduplication on a canonical, tempo-independent onset grid (reference/loop_metrics.md,
"Stage 1 filters and dedupe").

The product deduplicated by "sum of pitches" and "sorted pitch-count profile": two different grooves that
happen to share those numbers were merged. Here a loop is reduced to what a listener would call "the same
pattern": which drum category plays on which 16th step of which bar, and how hard.

- Exact duplicates (identical grid, same bar count) are dropped, keeping the first loop by loop_id order.
- Near-duplicates (cosine similarity ≥ threshold, same bar count and grid shape) are grouped into clusters
  by single linkage (connected components), reported, and kept: a near-duplicate is often a deliberate
  variation (one ghost note added), which a training set wants.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from mixai_pipeline.lib.midi.categories import CATEGORIES, category_lookup
from mixai_pipeline.lib.midi.loop import Loop

STEPS_PER_QUARTER = 4  # a 16th note is a quarter of a beat (ticks_per_beat counts quarter notes)
_category_table = lru_cache(maxsize=None)(category_lookup)  # built once per pitch map, not once per loop


@dataclass(frozen=True)
class NearDuplicateCluster:
    """Loops whose grids are (transitively) at least ``threshold`` cosine-similar.

    cluster_id is built from the first member's loop_id, so it stays the same when unrelated loops
    are added to or removed from the pack.
    """

    cluster_id: str
    bars: int
    loop_ids: tuple[str, ...]  # sorted; ≥ 2 members


def loop_bars(loop: Loop) -> int:
    """Whole bars in the loop (Stage 1 loops always span a whole number of bars)."""
    return int(round(loop.bar_count))


def grid_steps(loop: Loop) -> int:
    """16th steps spanned by the loop: 16 per 4/4 bar, 12 per 3/4 or 6/8 bar, rounded up for odd meters."""
    return -(-loop.length_ticks * STEPS_PER_QUARTER // loop.ticks_per_beat)


def canonical_grid(loop: Loop, pitch_map: str = "gm", *, velocity_weighted: bool = True) -> np.ndarray:
    """The loop as a (len(CATEGORIES), steps) float32 grid: category × 16th step across all its bars.

    Each onset goes to the nearest 16th of the loop's ticks-per-beat, so the grid does not depend on the
    tempo or the file's resolution: the same groove at 90 BPM / 96 tpb and at 140 BPM / 480 tpb gives the
    same grid. A note played early before the loop's first downbeat (negative onset, see
    ``stage1.slice_loops``) lands on step 0; one rounding past the end lands on the last step.

    Cells hold the loudest velocity / 127 of the hits they receive (velocity_weighted, the default) or 1.0.
    Velocity-weighted is the default because the pack's material is often human performance: a drummer
    repeating the same groove for a minute gives many windows with the same binary pattern, which are not
    copies of one another (their dynamics differ) and must not be dropped as exact duplicates; a real copy
    (the same loop re-exported at another tempo) has the same velocities and still matches exactly.
    Different pitches of one category (kick 35 and 36) fall in the same row on purpose.
    """
    steps = grid_steps(loop)
    grid = np.zeros((len(CATEGORIES), steps), dtype=np.float32)
    if loop.n_notes == 0:
        return grid
    lookup = _category_table(pitch_map)
    pitches = np.clip(loop.pitch.astype(np.int64), 0, 127)
    rows = lookup[pitches].astype(np.int64)
    # nearest step, half-way rounding up (floor(x + 0.5)) so it does not depend on banker's rounding
    position = loop.onset.astype(np.float64) * STEPS_PER_QUARTER / loop.ticks_per_beat
    cols = np.clip(np.floor(position + 0.5).astype(np.int64), 0, steps - 1)
    values = loop.velocity.astype(np.float32) / 127.0 if velocity_weighted else np.ones(loop.n_notes, np.float32)
    np.maximum.at(grid, (rows, cols), values)
    return grid


def exact_duplicates(loops: Sequence[Loop], grids: Sequence[np.ndarray]) -> tuple[list[int], list[tuple[str, str]]]:
    """Indices of the loops to keep, and (dropped loop_id, kept loop_id) for every exact duplicate.

    Loops are visited in loop_id order, so the loop kept out of a group of copies is the one with the
    smallest loop_id, whatever order the files came in. Two grids are the same when they have the same
    bar count, shape and bytes (the grid is computed the same way for both, so float equality is exact);
    the bytes are kept as a 128-bit BLAKE2 digest, not whole (76k grids would hold ~100 MB of keys).
    """
    order = sorted(range(len(loops)), key=lambda i: loops[i].loop_id)
    first_with_key: dict[tuple, int] = {}
    keep: list[int] = []
    duplicates: list[tuple[str, str]] = []
    for i in order:
        key = (loop_bars(loops[i]), grids[i].shape, hashlib.blake2b(grids[i].tobytes(), digest_size=16).digest())
        kept = first_with_key.setdefault(key, i)
        if kept == i:
            keep.append(i)
        else:
            duplicates.append((loops[i].loop_id, loops[kept].loop_id))
    keep.sort()
    return keep, duplicates


def near_duplicate_clusters(
    loop_ids: Sequence[str],
    grids: Sequence[np.ndarray],
    bars: Sequence[int],
    *,
    threshold: float = 0.95,
    block: int = 4096,
) -> list[NearDuplicateCluster]:
    """Clusters of loops whose grids have cosine similarity ≥ threshold, within one bar count and shape.

    Single linkage: A~B and B~C put A, B and C in one cluster even if A and C are further apart — the
    cluster is a "check these together" report, not a verdict. Comparing every pair is a float32 matrix
    product of the L2-normalised flattened grids, done in ``block`` × ``block`` tiles over the upper
    triangle only, so memory stays at a few tiles (4096² float32 = 64 MB) whatever the pack size; the
    edges found in a tile are merged into the components (union-find by connected components) at once.
    Measured: 76,165 synthetic loops (2/3 two-bar, 1/3 four-bar) in 11–16 s on the shared 2-core box,
    nearly all of it the matrix products (~1 TFLOP); grid building adds ~1.5 s, exact duplicates ~0.3 s.
    """
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"near-duplicate threshold must be in (0, 1], got {threshold}")
    groups: dict[tuple, list[int]] = {}
    for i, (grid, n_bars) in enumerate(zip(grids, bars, strict=True)):
        groups.setdefault((n_bars, grid.shape), []).append(i)

    clusters: list[NearDuplicateCluster] = []
    for (n_bars, _shape), members in groups.items():
        if len(members) < 2:
            continue
        matrix = np.stack([grids[i].ravel() for i in members]).astype(np.float32, copy=False)
        norms = np.linalg.norm(matrix, axis=1, keepdims=True)
        matrix /= np.where(norms > 0, norms, 1.0)
        labels = _similarity_components(matrix, threshold, block)
        by_label: dict[int, list[str]] = {}
        for member, label in zip(members, labels, strict=True):
            by_label.setdefault(int(label), []).append(loop_ids[member])
        for ids in by_label.values():
            if len(ids) > 1:
                ids.sort()
                clusters.append(NearDuplicateCluster(f"nd:{n_bars}b:{ids[0]}", int(n_bars), tuple(ids)))
    clusters.sort(key=lambda c: c.cluster_id)
    return clusters


def _similarity_components(unit_rows: np.ndarray, threshold: float, block: int) -> np.ndarray:
    """Connected-component label of each row under "cosine ≥ threshold" (rows already unit length).

    The matrix products are the whole cost (~n²·d/2 multiply-adds); the rest is kept linear in the tile
    size: one reusable product buffer, the hits read with a flat scan (much faster than a 2-D np.nonzero
    on a mostly-False tile), and each tile's edges folded into the components at once, reduced to distinct
    pairs of components — so a pack with thousands of mutually similar loops never holds more than one
    tile's edges in memory.
    """
    n = unit_rows.shape[0]
    unit_rows = np.ascontiguousarray(unit_rows[:, unit_rows.any(axis=0)])  # all-zero columns add nothing
    labels = np.arange(n)
    # float32 products of identical unit vectors can come out a hair under 1.0; don't lose the boundary
    cutoff = np.float32(threshold - 1e-6)
    buffer = np.empty((min(block, n), min(block, n)), dtype=np.float32)
    for start in range(0, n, block):
        rows = unit_rows[start : start + block]
        for other in range(start, n, block):
            columns = unit_rows[other : other + block]
            similarity = buffer[: rows.shape[0], : columns.shape[0]]
            if not similarity.flags.c_contiguous:  # the last, narrower tile of a row
                similarity = np.empty((rows.shape[0], columns.shape[0]), dtype=np.float32)
            np.matmul(rows, columns.T, out=similarity)
            if other == start:
                np.fill_diagonal(similarity, 0.0)  # never a loop with itself
            hits = np.flatnonzero(similarity.ravel() >= cutoff)
            if not hits.size:
                continue
            r, c = np.divmod(hits, similarity.shape[1])
            source, target = labels[r + start], labels[c + other]
            new = source != target
            if new.any():
                pairs = np.unique(source[new] * n + target[new])
                labels = _merge(labels, pairs // n, pairs % n)
    return labels


def _merge(labels: np.ndarray, sources: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Union the new edges into the current components.

    ``labels[k]`` is the smallest node of k's component (a node index, so that linking every node to its
    label keeps the components found so far); the result has the same form.
    """
    n = labels.size
    nodes = np.arange(n)
    edge_from = np.concatenate([nodes, sources])
    edge_to = np.concatenate([labels, targets])
    graph = coo_matrix((np.ones(edge_from.size, dtype=np.int32), (edge_from, edge_to)), shape=(n, n)).tocsr()
    n_components, component = connected_components(graph, directed=False)
    smallest = np.full(n_components, n, dtype=np.int64)
    np.minimum.at(smallest, component, nodes)
    return smallest[component]
