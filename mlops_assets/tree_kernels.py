"""The compiled loop behind `CompiledTrees.predict` (numba; cached on disk like the window reads).

Per row and tree: from the root, LightGBM's decision at each node until a leaf; the leaf values are
summed per class in tree order, then the objective's transform is applied with LightGBM's formula.
"""

from __future__ import annotations

import math

import numba
import numpy as np

ZERO = float(np.float32(1e-35))
SIGMOID, SOFTMAX = 0, 1


@numba.njit(cache=True, nogil=True)
def predict(x: np.ndarray, roots: np.ndarray, feature: np.ndarray, threshold: np.ndarray, decision: np.ndarray,
            left: np.ndarray, right: np.ndarray, leaf_value: np.ndarray, cat_start: np.ndarray,
            cat_words: np.ndarray, cat_bits: np.ndarray, n_class: int, transform: int,
            sigmoid: float) -> np.ndarray:
    n, trees = x.shape[0], roots.shape[0]
    out = np.zeros((n, n_class), dtype=np.float64)
    for i in range(n):
        for t in range(trees):
            node = roots[t]
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
            out[i, t % n_class] += leaf_value[~node]
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
    return out
