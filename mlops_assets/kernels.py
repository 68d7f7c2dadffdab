"""Compile the numba loops (the online windows' batch read, the compiled trees) into numba's on-disk cache.

Run once after install (`make` does: `python -m mlops_assets.kernels`), so neither the first model load
(the infra-validation probe, the service) nor the first batch read of a fresh clone compiles.
"""

from __future__ import annotations

import time


def main() -> None:
    started = time.perf_counter()
    from mlops_assets import tree_kernels
    from mlops_assets.features import window_kernels

    window_kernels.warm()
    tree_kernels.warm()
    print(f"numba loops compiled and cached in {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
