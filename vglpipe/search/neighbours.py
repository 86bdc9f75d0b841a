"""Neighbour scoring: a retrieved cell's score plus a share of the mean score of the cells around it.

A photo is localized if a cell within 50 m of it is ranked first, and the cells around the
right place tend to score high together, while a lone high-scoring cell elsewhere is more
often a look-alike. So each candidate's inner product ``s(c)`` is replaced by

    s'(c) = s(c) + w · mean{ s(n) : n in the index, n ≠ c, centre of n within 1.5 cell sizes of c's }

(the 8 cells around c in a grid of square cells; where none is in the index, the mean is s(c)).
The neighbours' scores are exact inner products with their stored vectors. ``w`` is
``index.neighbour_weight`` (0: the paper's ranking, by s alone).
"""

from __future__ import annotations

import numpy as np

from vglpipe.geo.layout import Layout

#: Neighbours are the cells whose centre lies within this many cell sizes of a cell's centre.
NEIGHBOUR_RADIUS_CELLS = 1.5


def neighbour_radius_m(layout: Layout) -> float:
    return NEIGHBOUR_RADIUS_CELLS * layout.cell_m


def neighbour_positions(layout: Layout, cell_ids: np.ndarray, position_of) -> np.ndarray:
    """(n, j) index positions of each cell's neighbours held by the index, padded with -1.

    ``position_of(ids)`` maps cell ids to index positions (-1 where the index lacks the cell)."""
    cell_ids = np.asarray(cell_ids, dtype=np.int64).reshape(-1)
    lat, lon = layout.center_of_ids(cell_ids)
    near = layout.cells_within(lat, lon, neighbour_radius_m(layout))
    pos = position_of(near.ids)
    keep = (pos >= 0) & (near.ids != cell_ids[near.point])
    point, pos = near.point[keep], pos[keep]
    counts = np.bincount(point, minlength=cell_ids.size)
    out = np.full((cell_ids.size, max(int(counts.max(initial=0)), 1)), -1, np.int64)
    order = np.argsort(point, kind="stable")
    point, pos = point[order], pos[order]
    slot = np.arange(point.size) - np.repeat(np.cumsum(counts) - counts, counts)
    out[point, slot] = pos
    return out


def rescore(queries: np.ndarray, ids: np.ndarray, scores: np.ndarray, weight: float, layout: Layout,
            position_of, vectors, block_cells: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Neighbour-scored (ids, scores) of one chunk of search results, best first.

    ``queries`` (m, d) float32; ``ids``/``scores`` (m, p) from the index (padding: id -1,
    score -inf, stays last); ``position_of(ids)`` as in :func:`neighbour_positions`;
    ``vectors(positions)`` returns the stored (n, d) vectors. Queries are taken in blocks of
    about ``block_cells`` candidates, so memory is bounded (block_cells x 8 x d floats)."""
    m, p = ids.shape
    new = np.full((m, p), -np.inf, np.float32)
    step = max(1, block_cells // max(p, 1))
    for a in range(0, m, step):
        blk = slice(a, min(a + step, m))
        b_ids, b_scores = ids[blk], scores[blk]
        rows, cols = np.nonzero(b_ids >= 0)
        nb = neighbour_positions(layout, b_ids[rows, cols], position_of)  # (n, j)
        has = nb >= 0
        s_nb = np.zeros(nb.shape, np.float32)
        if has.any():
            pair_row = np.broadcast_to(rows[:, None], nb.shape)[has]
            vec = np.asarray(vectors(nb[has]), dtype=np.float32)
            s_nb[has] = np.einsum("nd,nd->n", vec, np.asarray(queries[blk], np.float32)[pair_row])
        n = has.sum(1)
        own = b_scores[rows, cols]
        mean = np.where(n > 0, s_nb.sum(1) / np.maximum(n, 1), own)
        out = np.full(b_ids.shape, -np.inf, np.float32)
        out[rows, cols] = own + weight * mean
        new[blk] = out
    order = np.argsort(-new, axis=1, kind="stable")
    return np.take_along_axis(ids, order, 1), np.take_along_axis(new, order, 1)
