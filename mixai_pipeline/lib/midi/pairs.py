"""Nearest-neighbour pairs of loops in Stage 2 metric space (reference/loop_metrics.md "Outputs" → pairs).

Pairs feed the training-pair builder (seed 002 §4.2 step 5): a loop and its closest neighbours are
positives, and "genre A → genre B" queries find, for a funk loop, the rock loops that groove most like
it. Similarity is the cosine of z-scored metric vectors, so every metric weighs the same whatever its
unit (ticks, ms, ratios).

Scale: Stage 1 yields up to 76,165 loops, so the full n × n similarity matrix (23 GB in float32) is never
built. Query rows are processed in blocks of ~BLOCK_BYTES of scores on a thread pool: a float32 matrix
product against all candidates, a group-maximum bound that discards almost every score without sorting
or partitioning it, and an exact sort of the few survivors (_top_k_block). Measured on synthetic data
(76,165 loops × 36 metrics, 2 shared cores): ~8 s, ~400 MB peak.
"""

from __future__ import annotations

import contextlib
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd
import pandera.pandas as pa

from mixai_pipeline.lib.midi.labels import Taxonomy, load_taxonomy

DEFAULT_K = 5
DEFAULT_THRESHOLD = 0.4
# Score block size in bytes (block rows × candidates × 4). Small enough that a block stays in the L3
# cache between the matrix product and the group-maximum pass (on the 32 MB-L3 host, 64 MB blocks ran
# the product ~2× slower), large enough for BLAS to run at full speed (≥ ~30 rows).
BLOCK_BYTES = 12 * 2**20
# Candidate columns are split into this many groups; only groups whose best score can reach a row's
# top k are examined exactly (see _top_k_block). 1024 groups of ~75 loops each at 76k loops: the
# group-max pass is cheap and the few surviving groups are small.
GROUPS = 1024
# Similarities are computed in float32 (≈ 7 significant digits) and reported rounded to 6 decimals;
# ranking uses the rounded value, so two loops whose float32 results differ only by rounding noise
# count as tied and the tie goes to the smaller loop_id — the same answer on every run and block size.
SIMILARITY_DECIMALS = 6
_TIE_TOLERANCE = 10.0 ** -SIMILARITY_DECIMALS

PAIR_COLUMNS = ("loop_id", "other_id", "rank", "similarity")

PAIRS_SCHEMA = pa.DataFrameSchema(
    {
        "loop_id": pa.Column(str),
        "other_id": pa.Column(str),
        "rank": pa.Column("int64", checks=pa.Check.ge(1)),
        "similarity": pa.Column(float, checks=pa.Check.in_range(-1.0, 1.0)),
    },
    checks=pa.Check(lambda df: (df["loop_id"] != df["other_id"]).all(), error="a loop paired with itself"),
    strict=False,  # genre_transfer_pairs adds source_genre / target_genre
)


def metric_features(metrics_df: pd.DataFrame, columns: list[str] | None = None) -> tuple[np.ndarray, list[str]]:
    """The unit-length float32 feature rows of ``metrics_df`` (same row order) and the columns used.

    - Columns: ``columns`` if given (each must be numeric), else every numeric, non-boolean column; the
      string ``rhythm_hash`` and any other text is never a coordinate.
    - ±inf counts as missing. A column with no value at all is dropped.
    - Missing values are imputed with the column median — robust to the skewed metrics (IOI counts,
      breakpoints) and, after z-scoring, close to 0, so an undefined metric barely moves the cosine
      instead of pretending to be an extreme value.
    - Each column is z-scored (population std); a column with zero variance carries no information and
      would divide by zero, so it is dropped.
    - Rows are L2-normalised so a dot product is the cosine. A row sitting exactly at the mean of every
      column has no direction and stays the zero vector: similarity 0 with everything.
    """
    if columns is None:
        columns = [
            c
            for c in metrics_df.columns
            if pd.api.types.is_numeric_dtype(metrics_df[c]) and not pd.api.types.is_bool_dtype(metrics_df[c])
        ]
    else:
        missing = [c for c in columns if c not in metrics_df.columns]
        if missing:
            raise ValueError(f"metric columns not in the frame: {missing}")
        not_numeric = [c for c in columns if not pd.api.types.is_numeric_dtype(metrics_df[c])]
        if not_numeric:
            raise ValueError(f"metric columns are not numeric: {not_numeric}")
    values = metrics_df[list(columns)].to_numpy(dtype=np.float64, na_value=np.nan, copy=True)
    values[~np.isfinite(values)] = np.nan

    has_values = ~np.all(np.isnan(values), axis=0) if len(values) else np.zeros(len(columns), dtype=bool)
    values = values[:, has_values]
    kept = [c for c, keep in zip(columns, has_values, strict=True) if keep]
    if values.shape[1]:
        medians = np.nanmedian(values, axis=0)
        values = np.where(np.isnan(values), medians, values)
        mean = values.mean(axis=0)
        std = values.std(axis=0)
        informative = std > 1e-12 * np.maximum(1.0, np.abs(mean))
        values = (values[:, informative] - mean[informative]) / std[informative]
        kept = [c for c, keep in zip(kept, informative, strict=True) if keep]

    norms = np.linalg.norm(values, axis=1, keepdims=True)
    values = np.divide(values, norms, out=np.zeros_like(values), where=norms > 0)
    return np.ascontiguousarray(values, dtype=np.float32), kept


def similarity_pairs(
    metrics_df: pd.DataFrame,
    *,
    k: int = DEFAULT_K,
    threshold: float = DEFAULT_THRESHOLD,
    columns: list[str] | None = None,
    n_threads: int | None = None,
) -> pd.DataFrame:
    """For each loop, its top-k most similar other loops with cosine similarity ≥ ``threshold``.

    ``metrics_df`` is the Stage 2 metrics frame indexed by loop_id. Returns columns loop_id, other_id,
    rank (1 = most similar), similarity, sorted by (loop_id, rank). A loop is never its own neighbour;
    other loops with identical metrics are (similarity 1). Ties are broken by the smaller other_id, and
    rows are processed in loop_id order, so the result does not depend on the frame's row order.
    ``n_threads`` (default: the CPUs this process may use) changes speed only, never the result.
    """
    _check_k_threshold(k, threshold)
    metrics_df = _sorted_unique(metrics_df)
    ids = metrics_df.index.to_numpy(dtype=object)
    if len(ids) < 2:
        return _empty_pairs()
    features, used = metric_features(metrics_df, columns)
    if not used:
        raise ValueError("similarity_pairs: no metric column varies across the loops; nothing to compare")
    positions = np.arange(len(ids))
    query, other, rank, similarity = _top_k_cosine(features, features, positions, positions, k, threshold, n_threads)
    return PAIRS_SCHEMA.validate(_pairs_frame(ids[query], ids[other], rank, similarity))


def genre_transfer_pairs(
    metrics_df: pd.DataFrame,
    labels_df: pd.DataFrame,
    source_genre: str,
    target_genre: str,
    *,
    k: int = DEFAULT_K,
    threshold: float = DEFAULT_THRESHOLD,
    columns: list[str] | None = None,
    taxonomy: Taxonomy | None = None,
    n_threads: int | None = None,
) -> pd.DataFrame:
    """For each loop of ``source_genre``, its nearest loops of ``target_genre`` (seed 002 §4.2 step 5).

    Features are prepared over the *whole* metrics frame, as in similarity_pairs, so a similarity means
    the same in both outputs. Genres are taxonomy names or aliases ("hip-hop" → hiphop); any other
    name raises ValueError. ``labels_df`` (labels.labels_frame output, or any frame with a ``genre``
    column indexed by loop_id) decides membership; loops without a label belong to no genre. When the
    two genres are the same, a loop is still never paired with itself. Columns: those of
    similarity_pairs plus source_genre and target_genre.
    """
    _check_k_threshold(k, threshold)
    taxonomy = taxonomy or load_taxonomy()
    resolved = []
    for role, name in (("source", source_genre), ("target", target_genre)):
        genre = taxonomy.resolve_genre(name) if isinstance(name, str) else None
        if genre is None:
            raise ValueError(f"unknown {role} genre {name!r}; known genres: {', '.join(taxonomy.genre_names)}")
        resolved.append(genre)
    source, target = resolved
    if "genre" not in labels_df.columns:
        raise ValueError("labels_df has no 'genre' column")
    if not labels_df.index.is_unique:
        raise ValueError("labels_df has duplicate loop_id index values")

    metrics_df = _sorted_unique(metrics_df)
    ids = metrics_df.index.to_numpy(dtype=object)
    genres = labels_df["genre"].reindex(metrics_df.index).to_numpy(dtype=object)
    query_positions = np.flatnonzero(genres == source)
    candidate_positions = np.flatnonzero(genres == target)
    if query_positions.size == 0 or candidate_positions.size == 0:
        return _empty_pairs(source, target)
    features, used = metric_features(metrics_df, columns)
    if not used:
        raise ValueError("genre_transfer_pairs: no metric column varies across the loops; nothing to compare")
    query, other, rank, similarity = _top_k_cosine(
        features[query_positions],
        features[candidate_positions],
        query_positions,
        candidate_positions,
        k,
        threshold,
        n_threads,
    )
    frame = _pairs_frame(ids[query_positions[query]], ids[candidate_positions[other]], rank, similarity)
    frame["source_genre"] = source
    frame["target_genre"] = target
    return PAIRS_SCHEMA.validate(frame)


def _top_k_cosine(queries, candidates, query_ids, candidate_ids, k, threshold, n_threads=None):
    """Exact top-k by dot product of unit rows, in blocks of query rows run on a thread pool.

    Returns (query position, candidate position, rank, rounded similarity) arrays, ordered by query
    then rank. ``query_ids``/``candidate_ids`` are the rows' global positions, used only to keep a loop
    out of its own neighbours.
    """
    candidate_slot = {int(g): i for i, g in enumerate(candidate_ids)}
    self_slot = np.array([candidate_slot.get(int(g), -1) for g in query_ids], dtype=np.int64)
    n_queries, n_candidates = len(queries), len(candidates)
    members = -(-n_candidates // GROUPS)
    # Zero-padded to GROUPS × members columns; the padding's scores are set to -inf in every block.
    candidates_t = np.zeros((queries.shape[1], members * GROUPS), dtype=np.float32)
    candidates_t[:, :n_candidates] = candidates.T
    block_rows = max(1, min(n_queries, BLOCK_BYTES // (4 * candidates_t.shape[1])))
    starts = range(0, n_queries, block_rows)

    def run(start: int):
        stop = min(n_queries, start + block_rows)
        return _top_k_block(queries[start:stop], candidates_t, n_candidates, self_slot[start:stop], k, threshold, start)

    n_threads = n_threads or _default_threads()
    with _single_threaded_blas():
        if n_threads > 1 and len(starts) > 1:
            with ThreadPoolExecutor(max_workers=n_threads) as pool:
                parts = list(pool.map(run, starts))
        else:
            parts = [run(start) for start in starts]
    if not parts:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, empty, np.zeros(0)
    return tuple(np.concatenate([part[i] for part in parts]) for i in range(4))


def _top_k_block(queries, candidates_t, n_candidates, self_slot, k, threshold, offset):
    """Top-k of one block of query rows without partitioning every score.

    Partitioning all n scores of a row costs ~4 ns each, more than the matrix product itself. Instead
    the candidate columns are split into GROUPS disjoint groups (column j in group j mod GROUPS, so a
    group maximum is a strided, SIMD-friendly reduction) and each group's maximum is taken. The k
    largest group maxima are k distinct scores, so the k-th largest of them, L, is a lower bound on the
    row's k-th best score: only groups whose maximum reaches max(L, threshold) − tolerance can hold a
    neighbour — usually about k of them — and only their scores are examined exactly. The tolerance
    keeps every score that could round to the k-th best, so ties are never lost; survivors are ranked by
    (rounded similarity desc, candidate position asc).
    """
    n_rows = len(queries)
    scores = queries @ candidates_t
    scores[:, n_candidates:] = -np.inf
    has_self = np.flatnonzero(self_slot >= 0)
    scores[has_self, self_slot[has_self]] = -np.inf

    grouped = scores.reshape(n_rows, -1, GROUPS)  # [row, member, group]; column = member × GROUPS + group
    group_max = grouped.max(axis=1)
    floor = np.float32(threshold - _TIE_TOLERANCE)
    if k < GROUPS:
        kth_group_max = np.partition(group_max, GROUPS - k, axis=1)[:, GROUPS - k]
        cutoff = np.maximum(kth_group_max - np.float32(_TIE_TOLERANCE), floor)
    else:
        cutoff = np.full(n_rows, floor, dtype=np.float32)
    row, group = np.nonzero(group_max >= cutoff[:, None])
    values = grouped[row, :, group]  # (surviving groups, members)
    survivor, member = np.nonzero(values >= cutoff[row][:, None])
    row = row[survivor]
    col = member * GROUPS + group[survivor]
    similarity = np.round(values[survivor, member].astype(np.float64), SIMILARITY_DECIMALS)
    keep = similarity >= threshold
    row, col, similarity = row[keep], col[keep], similarity[keep]

    order = np.lexsort((col, -similarity, row))
    row, col, similarity = row[order], col[order], similarity[order]
    rank = np.arange(row.size) - np.searchsorted(row, row, side="left") + 1
    within_k = rank <= k
    return row[within_k] + offset, col[within_k], rank[within_k].astype(np.int64), similarity[within_k]


def _default_threads() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def _single_threaded_blas():
    """One BLAS thread per worker: blocks already run in parallel, and OpenBLAS's own threads on a busy
    2-core host made these thin products (k = ~40) 4–14× slower. A no-op without threadpoolctl."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


def _check_k_threshold(k: int, threshold: float) -> None:
    if not isinstance(k, int | np.integer) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    if not -1.0 <= threshold <= 1.0:
        raise ValueError(f"threshold is a cosine similarity in [-1, 1], got {threshold!r}")


def _sorted_unique(metrics_df: pd.DataFrame) -> pd.DataFrame:
    """The frame in loop_id order, so ties and blocks never depend on how the rows arrived."""
    if not metrics_df.index.is_unique:
        duplicated = metrics_df.index[metrics_df.index.duplicated()].unique()[:5].tolist()
        raise ValueError(f"metrics_df index (loop_id) has duplicates, e.g. {duplicated}")
    metrics_df = metrics_df.copy(deep=False)
    metrics_df.index = metrics_df.index.astype(str)
    return metrics_df.sort_index(kind="stable")


def _pairs_frame(loop_ids, other_ids, rank, similarity) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "loop_id": pd.array(loop_ids, dtype="str"),
            "other_id": pd.array(other_ids, dtype="str"),
            "rank": np.asarray(rank, dtype=np.int64),
            "similarity": np.asarray(similarity, dtype=np.float64),
        }
    )


def _empty_pairs(source: str | None = None, target: str | None = None) -> pd.DataFrame:
    frame = _pairs_frame([], [], [], [])
    if source is not None:
        frame["source_genre"] = pd.array([], dtype="str")
        frame["target_genre"] = pd.array([], dtype="str")
    return frame
