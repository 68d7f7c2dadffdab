"""The compiled loops behind `CompiledTrees.predict` (numba; cached on disk like the window reads).

Per row and tree: from the root, LightGBM's decision at each node until a leaf; the leaf values are
summed per class in tree order, then the objective's transform is applied with LightGBM's formula.
`predict` walks one tree over every row before the next (the tree's nodes stay in cache); a batch of
PARALLEL_ROWS or more goes to `predict_parallel`, whose rows are shared out over the cores (numba's
threads, as LightGBM's OpenMP ones would be). Each row's sum runs in tree order either way, so both
give the same bits.
"""

from __future__ import annotations

import math

import numba
import numpy as np

ZERO = float(np.float32(1e-35))
SIGMOID, SOFTMAX = 0, 1
PARALLEL_ROWS = 64  # measured: below this the threads' start costs more than they save


@numba.njit(inline="always")
def _leaf(x: np.ndarray, i: int, node: int, feature: np.ndarray, threshold: np.ndarray, decision: np.ndarray,
          left: np.ndarray, right: np.ndarray, cat_start: np.ndarray, cat_words: np.ndarray,
          cat_bits: np.ndarray) -> int:
    """The leaf row i of x reaches from `node`."""
    while node >= 0:
        v = x[i, feature[node]]
        if v >= -ZERO and v <= ZERO:  # as LightGBM reads a dense row (NaN compares false)
            v = 0.0
        kind = decision[node]
        if kind & 1:  # Tree::CategoricalDecision; static_cast<int> of NaN or >= 2^31 is negative on x86
            if math.isnan(v) or v <= -1.0 or v >= 2147483648.0:
                node = right[node]
            else:
                code = int(v)
                word = code >> 5
                if word < cat_words[node] and (cat_bits[cat_start[node] + word] >> (code & 31)) & 1:
                    node = left[node]
                else:
                    node = right[node]
        else:  # Tree::NumericalDecision
            missing = (kind >> 2) & 3
            if math.isnan(v) and missing != 2:
                v = 0.0
            if (missing == 1 and v >= -ZERO and v <= ZERO) or (missing == 2 and math.isnan(v)):
                node = left[node] if kind & 2 else right[node]
            elif v <= threshold[node]:
                node = left[node]
            else:
                node = right[node]
    return ~node


@numba.njit(inline="always")
def _transform(out: np.ndarray, i: int, n_class: int, transform: int, sigmoid: float) -> None:
    if transform == SIGMOID:
        out[i, 0] = 1.0 / (1.0 + math.exp(-sigmoid * out[i, 0]))
    elif transform == SOFTMAX:
        top = out[i, 0]
        for k in range(1, n_class):
            top = max(out[i, k], top)
        total = 0.0
        for k in range(n_class):
            out[i, k] = math.exp(out[i, k] - top)
            total += out[i, k]
        for k in range(n_class):
            out[i, k] /= total


@numba.njit(cache=True, nogil=True)
def predict(x: np.ndarray, roots: np.ndarray, feature: np.ndarray, threshold: np.ndarray, decision: np.ndarray,
            left: np.ndarray, right: np.ndarray, leaf_value: np.ndarray, cat_start: np.ndarray,
            cat_words: np.ndarray, cat_bits: np.ndarray, n_class: int, transform: int,
            sigmoid: float) -> np.ndarray:
    n = x.shape[0]
    out = np.zeros((n, n_class), dtype=np.float64)
    for t in range(roots.shape[0]):
        k = t % n_class
        for i in range(n):
            out[i, k] += leaf_value[_leaf(x, i, roots[t], feature, threshold, decision, left, right, cat_start,
                                          cat_words, cat_bits)]
    for i in range(n):
        _transform(out, i, n_class, transform, sigmoid)
    return out


@numba.njit(cache=True, nogil=True, parallel=True)
def predict_parallel(x: np.ndarray, roots: np.ndarray, feature: np.ndarray, threshold: np.ndarray,
                     decision: np.ndarray, left: np.ndarray, right: np.ndarray, leaf_value: np.ndarray,
                     cat_start: np.ndarray, cat_words: np.ndarray, cat_bits: np.ndarray, n_class: int,
                     transform: int, sigmoid: float) -> np.ndarray:
    n = x.shape[0]
    out = np.zeros((n, n_class), dtype=np.float64)
    for i in numba.prange(n):
        for t in range(roots.shape[0]):
            out[i, t % n_class] += leaf_value[_leaf(x, i, roots[t], feature, threshold, decision, left, right,
                                                    cat_start, cat_words, cat_bits)]
        _transform(out, i, n_class, transform, sigmoid)
    return out


def warm() -> None:
    """Compile both loops (or load them from the cache) now: `make` does it at install, so the first
    model load of a fresh clone does not pay the ~3 s compile."""
    x, i1 = np.zeros((1, 1)), np.zeros(1, dtype=np.int64)
    for kernel in (predict, predict_parallel):
        kernel(x, ~np.zeros(1, dtype=np.int64), i1, np.zeros(1), i1, i1, i1, np.zeros(1), i1, i1,
               np.zeros(1, dtype=np.uint32), 1, SIGMOID, 1.0)
