"""A LightGBM booster compiled to a C shared library (treelite reads it, tl2cgen writes the C).

Thresholds and leaf values stay float64 and the trees are summed in LightGBM's order, so the
library's scores equal the booster's (the export checks it). A small C entry point (`edge.c`)
scores a whole float64 matrix in one call, NaN meaning missing, so the runner needs nothing but
`ctypes`. The C sources ship with the library: an edge target of another architecture rebuilds it
with the same command.
"""

from __future__ import annotations

import hashlib
import math
import os
import platform
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

LIBRARY = "model.so"
SOURCES = "src"
# ISO C (no FMA contraction) and no fast-math: NaN tests and the summation order must stay LightGBM's.
MISSING_TEST = re.compile(r"data\[(\d+)\]\.missing != -1")
# gcc's time grows faster than linearly with a function's size: trees go into units of this many
# (one function each, called in tree order, so the sum's order is unchanged).
TREES_PER_UNIT = 20
CFLAGS = ["-O2", "-std=c99", "-fPIC", "-shared", "-ffp-contract=off"]

ENTRY = r"""/* Scores n rows of a float64 matrix in feature order; NaN is a missing value (the trees test isnan).
   As LightGBM reads a dense row, a value within its kZeroThreshold (1e-35f) of zero is zero. */
#include <math.h>
#include <stdlib.h>
#include "header.h"

int edge_num_feature(void) { return get_num_feature(); }
int edge_num_output(void) { return N_TARGET * MAX_N_CLASS; }

int edge_predict(const double* x, long n_rows, double* out) {
  const int n_feature = get_num_feature();
  const int n_output = N_TARGET * MAX_N_CLASS;
  union Entry* row = malloc(sizeof(union Entry) * (n_feature > 0 ? n_feature : 1));
  if (row == NULL) { return 1; }
  for (long i = 0; i < n_rows; ++i) {
    for (int j = 0; j < n_feature; ++j) {
      const double v = x[i * n_feature + j];
      row[j].fvalue = (!isnan(v) && fabs(v) <= (double)1e-35f) ? 0.0 : v;
    }
    double* result = out + i * n_output;
    for (int k = 0; k < n_output; ++k) { result[k] = 0.0; }
    predict(row, 0, result);
  }
  free(row);
  return 0;
}
"""


class CompileError(Exception):
    """The booster could not be turned into a library (no C compiler, an unsupported model)."""


def target_platform() -> str:
    """What a compiled library runs on, as the runner checks it: e.g. `linux-x86_64`."""
    return f"{sys.platform}-{platform.machine()}"


def compiler() -> str:
    """The C compiler: $CC, else cc or gcc on the PATH."""
    for name in (os.environ.get("CC", ""), "cc", "gcc"):
        if name and shutil.which(name):
            return name
    raise CompileError("no C compiler found: install gcc (or set CC) to export an edge artifact")


def build_command(cc: str, sources: list[str]) -> list[str]:
    """The command that builds the library from the shipped sources (run inside the artifact folder)."""
    return [cc, *CFLAGS, "-o", LIBRARY, *sources, "-lm"]


def compile_booster(booster: Any, folder: Path) -> dict[str, object]:
    """C sources of the booster under `folder/src`, the library at `folder/model.so`; what was built."""
    try:
        import tl2cgen
        import treelite
    except ImportError as exc:
        raise CompileError(f"{exc.name} is not installed: pip install 'mlops_assets[edge]'") from None
    cc = compiler()
    source = folder / SOURCES
    source.mkdir(parents=True, exist_ok=True)
    try:
        with _native_output_quiet():
            model = treelite.frontend.from_lightgbm(booster)
            units = math.ceil(model.num_tree / TREES_PER_UNIT)
            tl2cgen.generate_c_code(model, str(source), params={"parallel_comp": units} if units > 1 else {})
    except Exception as exc:  # treelite/tl2cgen raise their own error types for unsupported models
        raise CompileError(f"treelite could not translate the booster: {exc}") from exc
    for generated in source.glob("*.c"):
        _missing_as_nan(generated)
    (source / "edge.c").write_text(ENTRY)
    (source / "recipe.json").unlink(missing_ok=True)
    command = build_command(cc, sorted(f"{SOURCES}/{p.name}" for p in source.glob("*.c")))
    done = subprocess.run(command, cwd=folder, capture_output=True, text=True)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise CompileError(f"{cc} failed to build {LIBRARY}: {last}")
    library = folder / LIBRARY
    return {"library": LIBRARY, "sha256": hashlib.sha256(library.read_bytes()).hexdigest(),
            "bytes": library.stat().st_size, "platform": target_platform(),
            "build": " ".join(build_command("cc", [f"{SOURCES}/*.c"])), "cflags": CFLAGS, "compiler": _version(cc),
            "treelite": treelite.__version__, "tl2cgen": tl2cgen.__version__}


@contextmanager
def _native_output_quiet() -> Iterator[None]:
    """The C libraries log progress (and tl2cgen's embedded treelite a version note) straight to the
    process's stdout and stderr; a CLI printing JSON must not carry that. Errors still raise."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with open(os.devnull, "w") as sink:
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)


def _missing_as_nan(path: Path) -> None:
    """Every `data[k].missing != -1` (present) becomes `!isnan(data[k].fvalue)`; nothing else may read `.missing`."""
    code = MISSING_TEST.sub(r"!isnan(data[\1].fvalue)", path.read_text())
    if ".missing" in code:
        raise CompileError("the generated C reads missing values in an unknown way: tl2cgen's output changed")
    path.write_text(code)


def _version(cc: str) -> str:
    done = subprocess.run([cc, "--version"], capture_output=True, text=True)
    return (done.stdout.splitlines() or [cc])[0]
