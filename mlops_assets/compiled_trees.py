"""A LightGBM booster's trees as flat arrays scored by one compiled loop (numba): the serving predict.

LightGBM's own predict costs ~14 µs a row here for a 145-tree model (its per-row setup, not the
trees); walking the same trees in one compiled loop over the matrix costs ~1 µs. Scores are
LightGBM's to the bit, by construction and by check: the decisions are `Tree::NumericalDecision` and
`Tree::CategoricalDecision` (missing types, default directions, category bitsets, a dense row's
values within 1e-35 of zero read as zero), leaves are summed per class in tree order from 0.0, and
the output transform is the objective's own formula (sigmoid, softmax, identity). `compile_trees`
returns None for what it does not reproduce (linear trees, random forests' averaging, objectives
with another transform) and the caller keeps LightGBM. Serving also compares both on probe rows
at every model load (`agrees`) and keeps LightGBM on any difference.

numba is imported by `compile_trees` (serving's model load), not by every process that imports this.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

ZERO = float(np.float32(1e-35))  # LightGBM's kZeroThreshold (a float): dense values this close to 0 are 0
IDENTITY_OBJECTIVES = ("regression", "regression_l1", "huber", "fair", "quantile", "mape")
SIGMOID, SOFTMAX, IDENTITY = range(3)


@dataclass(frozen=True)
class CompiledTrees:
    """Every node of every tree in flat arrays (children: a node index, or ~leaf into `leaf_value`)."""

    roots: np.ndarray  # per tree: its root node, or ~leaf for a single-leaf tree
    feature: np.ndarray
    threshold: np.ndarray
    decision: np.ndarray  # LightGBM's decision_type bits: 1 categorical, 2 default left, (>> 2) & 3 missing type
    left: np.ndarray
    right: np.ndarray
    leaf_value: np.ndarray
    cat_start: np.ndarray  # per node: its category bitset in `cat_bits` (start, words)
    cat_words: np.ndarray
    cat_bits: np.ndarray
    n_class: int
    transform: int
    sigmoid: float
    n_features: int

    def predict(self, matrix: np.ndarray) -> np.ndarray:
        """What `booster.predict(matrix)` returns: (n,) for one output, (n, classes) for multiclass."""
        from mlops_assets import tree_kernels

        x = np.ascontiguousarray(matrix, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.n_features:
            raise ValueError(f"expected a matrix of {self.n_features} features, got shape {x.shape}")
        kernel = tree_kernels.predict_parallel if len(x) >= tree_kernels.PARALLEL_ROWS else tree_kernels.predict
        out = kernel(x, self.roots, self.feature, self.threshold, self.decision, self.left, self.right,
                     self.leaf_value, self.cat_start, self.cat_words, self.cat_bits, self.n_class, self.transform,
                     self.sigmoid)
        return out[:, 0] if self.n_class == 1 else out

    def numeric_splits(self) -> list[tuple[int, float]]:
        """(feature, threshold) of every numerical split."""
        numeric = (self.decision & 1) == 0
        return list(zip(self.feature[numeric].tolist(), self.threshold[numeric].tolist(), strict=True))


def _transform(objective: str) -> tuple[int, float, int] | None:
    """(transform, sigmoid, classes) of the model file's objective line, None for one not reproduced."""
    name, *params = objective.split()
    options = dict(p.split(":", 1) for p in params if ":" in p)
    flags = [p for p in params if ":" not in p]
    if flags:  # e.g. "regression sqrt": the output is transformed back
        return None
    if name == "binary":
        return SIGMOID, float(options.get("sigmoid", "1")), 1
    if name in ("multiclass", "softmax"):
        return SOFTMAX, 1.0, int(options["num_class"])
    if name in IDENTITY_OBJECTIVES:
        return IDENTITY, 1.0, 1
    return None


def _blocks(text: str) -> tuple[dict[str, str], list[dict[str, str]]]:
    """The model file's header and its `Tree=` blocks, each as key=value lines."""
    header: dict[str, str] = {}
    trees: list[dict[str, str]] = []
    current = header
    for line in text.splitlines():
        if line.startswith("Tree="):
            current = {}
            trees.append(current)
        elif line.startswith("end of trees"):
            break
        elif "=" in line:
            key, _, value = line.partition("=")
            current[key] = value
        elif line.strip() == "average_output":
            header["average_output"] = "1"
    return header, trees


def _numbers(tree: dict[str, str], key: str, dtype: Any) -> np.ndarray:
    value = tree.get(key, "").strip()
    return np.array(value.split(), dtype=dtype) if value else np.empty(0, dtype=dtype)


def _global(children: np.ndarray, nodes: int, leaves: int) -> np.ndarray:
    """A tree's children as indices into the flat arrays: nodes shifted by `nodes`, leaves (~leaf) by `leaves`."""
    return np.where(children >= 0, children + nodes, ~(~children + leaves))


def compile_trees(booster: Any) -> CompiledTrees | None:
    """The booster's trees (as `predict` uses them: its best iteration if it has one) in flat arrays."""
    header, trees = _blocks(booster.model_to_string())
    found = _transform(header.get("objective", ""))
    if found is None or "average_output" in header or not trees:
        return None
    transform, sigmoid, n_class = found
    if int(header.get("num_tree_per_iteration", "1")) != n_class or int(header.get("num_class", "1")) != n_class:
        return None
    roots, features, thresholds, decisions, lefts, rights, leaves = [], [], [], [], [], [], []
    cat_start, cat_words, cat_bits = [], [], []
    nodes = leaf_count = bits = 0
    for tree in trees:
        if tree.get("is_linear", "0") != "0":
            return None
        n_leaves = int(tree["num_leaves"])
        values = _numbers(tree, "leaf_value", np.float64)
        if n_leaves == 1:
            roots.append(~leaf_count)
        else:
            roots.append(nodes)
            decision = _numbers(tree, "decision_type", np.int64)
            threshold = _numbers(tree, "threshold", np.float64)
            bounds = _numbers(tree, "cat_boundaries", np.int64)
            words = _numbers(tree, "cat_threshold", np.uint32)
            lefts.append(_global(_numbers(tree, "left_child", np.int64), nodes, leaf_count))
            rights.append(_global(_numbers(tree, "right_child", np.int64), nodes, leaf_count))
            features.append(_numbers(tree, "split_feature", np.int64))
            thresholds.append(threshold)
            decisions.append(decision)
            categorical = (decision & 1) == 1
            index = np.where(categorical, threshold, 0).astype(np.int64)
            start = np.where(categorical, bounds[index] if len(bounds) else 0, 0) + bits
            count = np.where(categorical, (bounds[index + 1] - bounds[index]) if len(bounds) else 0, 0)
            cat_start.append(start)
            cat_words.append(count)
            cat_bits.append(words)
            bits += len(words)
            nodes += n_leaves - 1
        leaves.append(values)
        leaf_count += n_leaves

    def flat(parts: list[np.ndarray], dtype: Any) -> np.ndarray:
        return np.concatenate(parts).astype(dtype) if parts else np.empty(0, dtype=dtype)

    return CompiledTrees(np.array(roots, dtype=np.int64), flat(features, np.int64), flat(thresholds, np.float64),
                         flat(decisions, np.int64), flat(lefts, np.int64), flat(rights, np.int64),
                         flat(leaves, np.float64), flat(cat_start, np.int64), flat(cat_words, np.int64),
                         flat(cat_bits, np.uint32), n_class, transform, sigmoid,
                         int(header["max_feature_idx"]) + 1)


def numeric_splits(booster: Any) -> list[tuple[int, float]]:
    """(feature, threshold) of every numerical split, read from the model file (`dump_model`'s JSON of the
    same trees takes ~20 times longer)."""
    out: list[tuple[int, float]] = []
    for tree in _blocks(booster.model_to_string())[1]:
        if int(tree["num_leaves"]) > 1:
            numeric = (_numbers(tree, "decision_type", np.int64) & 1) == 0
            features, thresholds = _numbers(tree, "split_feature", np.int64), _numbers(tree, "threshold", np.float64)
            out += zip(features[numeric].tolist(), thresholds[numeric].tolist(), strict=True)
    return out


def probe_matrix(splits: list[tuple[int, float]], n_features: int, category_counts: dict[int, int],
                 rows: int = 2000, seed: int = 0, edge_cases: bool = True) -> np.ndarray:
    """Rows that exercise every split (`splits`: `numeric_splits`): each threshold and its float neighbours,
    each category, NaN and 0;
    with `edge_cases` also -0.0, infinities (a split the model file writes as `inf`), values within
    LightGBM's zero threshold, one category past the last and fractional or negative codes."""
    base = [math.nan, 0.0, -0.0, ZERO / 2, -ZERO / 2, math.inf, -math.inf] if edge_cases else [math.nan, 0.0]
    candidates: list[list[float]] = [list(base) for _ in range(n_features)]
    for j, count in category_counts.items():
        candidates[j] += [float(c) for c in range(count + 1 if edge_cases else count)] + ([-1.0, -0.5, 0.5] if edge_cases else [])
    for j, t in splits:
        candidates[j] += [t, float(np.nextafter(t, -np.inf)), float(np.nextafter(t, np.inf))]
    rng = np.random.default_rng(seed)
    out = np.empty((rows, n_features), dtype=np.float64)
    for j, values in enumerate(candidates):
        out[:, j] = rng.choice(np.asarray(values, dtype=np.float64), size=rows)
    return out


def agrees(compiled: CompiledTrees, booster: Any, matrix: np.ndarray) -> bool:
    """Whether the compiled trees score `matrix` exactly (bit for bit) as the booster does, both as one batch
    and in batches small enough for the one-thread loop."""
    from mlops_assets.tree_kernels import PARALLEL_ROWS

    theirs = np.asarray(booster.predict(matrix, num_threads=1), dtype=np.float64)
    small = PARALLEL_ROWS - 1
    parts = [compiled.predict(matrix[i:i + small]) for i in range(0, len(matrix), small)]
    for ours in (compiled.predict(matrix), np.concatenate(parts) if parts else theirs):
        if ours.shape != theirs.shape or not np.array_equal(ours.view(np.int64), theirs.view(np.int64)):
            return False
    return True
