"""Standalone scorer of an edge artifact: Python's standard library and the compiled model, nothing else.

Copied as `predict.py` into every exported artifact; it must never import the platform (nor numpy).
It scores feature vectors (the model's inputs, keyed by feature name), not service requests: the
features a request needs (windows, joins, calendar) are computed upstream, as batch scoring does.
Rows become the matrix exactly as `ScoringModel.matrix` builds it: a category is its index in the
frozen levels (unseen: missing), a number its float, an absent key or null missing (and an empty number, as CSV writes it).

    python predict.py rows.jsonl            # or rows.csv, or JSON lines on stdin
    python predict.py --format csv < rows.csv
    python predict.py --rebuild             # on another target: build model.so from src/ (needs cc)

One JSON answer per row on stdout, in order, with the fields of the online service's answer.
"""

from __future__ import annotations

import argparse
import csv
import ctypes
import hashlib
import io
import json
import math
import os
import platform
import shutil
import subprocess
import sys
from array import array
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

HERE = Path(__file__).resolve().parent
FORMAT = "mlops_assets.edge/1"  # the manifest layout this runner reads
NAN = float("nan")
FLOATABLE = frozenset({float, int, bool})


class EdgeError(Exception):
    """Bad input or a broken artifact: one line for the user."""


class EdgeModel:
    """The compiled model and its input contract, read from an artifact folder."""

    def __init__(self, folder: Path = HERE) -> None:
        try:
            self.manifest = json.loads((folder / "manifest.json").read_text())
        except (OSError, ValueError) as exc:
            raise EdgeError(f"no readable manifest.json in {folder}: {exc}") from exc
        m = self.manifest
        if not isinstance(m, dict) or m.get("format") != FORMAT:
            raise EdgeError(f"{folder / 'manifest.json'} is not a {FORMAT} manifest: re-export the artifact")
        self.features: list[str] = list(m["features"])
        self.problem: str = m["problem"]
        self.classes: list[str] | None = m.get("classes")
        self.threshold: float = float(m.get("threshold", 0.5))
        self.codes = {n: {level: code for code, level in enumerate(levels)}
                      for n, levels in m["categorical_levels"].items()}
        self.plan = [(name, self.codes.get(name)) for name in self.features]
        self.lib = self._library(folder, m["library"])
        self.n_output = int(self.lib.edge_num_output())

    def _library(self, folder: Path, built: Mapping[str, object]) -> ctypes.CDLL:
        here = f"{sys.platform}-{platform.machine()}"
        if built["platform"] != here:
            raise EdgeError(f"{built['library']} was built for {built['platform']}, this is {here}: "
                            f"rebuild it with `python {folder / 'predict.py'} --rebuild` (needs a C compiler)")
        path = folder / str(built["library"])
        try:
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
        except OSError as exc:
            raise EdgeError(f"cannot read the compiled model {path}: {exc}") from exc
        if digest != built["sha256"]:
            raise EdgeError(f"{path} does not match the manifest (sha256 {digest[:12]}…, expected "
                            f"{str(built['sha256'])[:12]}…): re-export the artifact")
        lib = ctypes.CDLL(str(path))
        lib.edge_predict.argtypes = [ctypes.POINTER(ctypes.c_double), ctypes.c_long,
                                     ctypes.POINTER(ctypes.c_double)]
        lib.edge_predict.restype = ctypes.c_int
        if lib.edge_num_feature() != len(self.features):
            raise EdgeError(f"{path} takes {lib.edge_num_feature()} features, the manifest names "
                            f"{len(self.features)}: re-export the artifact")
        return lib

    def matrix(self, rows: Sequence[Mapping[str, object]]) -> array:
        """Row-major float64 inputs in feature order, NaN for missing (as `ScoringModel.matrix`)."""
        out: list[float] = []
        append = out.append
        for i, row in enumerate(rows):
            get = row.get
            for name, codes in self.plan:
                value = get(name)
                if value is None:
                    append(NAN)
                elif codes is not None:
                    append(codes.get(value, NAN) if isinstance(value, str) else NAN)
                elif type(value) in FLOATABLE:
                    append(float(value))  # type: ignore[arg-type]
                else:
                    append(NAN if value == "" else _number(value, name, i))
        return array("d", out)

    def predict_matrix(self, values: array, n_rows: int) -> list[list[float]]:
        """One list of outputs per row: [P(positive)], class probabilities, or [value]."""
        if len(values) != n_rows * len(self.features):
            raise EdgeError(f"{len(values)} values are not {n_rows} rows of {len(self.features)} features")
        out = array("d", [0.0]) * (n_rows * self.n_output)
        if n_rows:
            x = (ctypes.c_double * len(values)).from_buffer(values)
            y = (ctypes.c_double * len(out)).from_buffer(out)
            if self.lib.edge_predict(x, n_rows, y) != 0:
                raise EdgeError("the compiled model could not allocate its row buffer")
        k = self.n_output
        return [out[i * k:(i + 1) * k].tolist() for i in range(n_rows)]

    def predict(self, rows: Sequence[Mapping[str, object]]) -> list[list[float]]:
        return self.predict_matrix(self.matrix(rows), len(rows))

    def answer(self, output: Sequence[float]) -> dict[str, object]:
        """The online service's answer fields for one row's outputs."""
        if self.problem == "binary":
            p = output[0]
            return {"probability": p, "decision": p >= self.threshold, "threshold": self.threshold}
        if self.problem == "multiclass":
            classes = self.classes or [str(i) for i in range(len(output))]
            best = max(range(len(output)), key=lambda c: output[c])
            return {"probabilities": dict(zip(classes, output, strict=True)), "predicted_class": classes[best]}
        return {"prediction": output[0]}


def rebuild(folder: Path = HERE) -> dict[str, object]:
    """Build the library from the shipped sources with this machine's C compiler (another target);
    the manifest then records the new library (the export's parity check ran on the exporting machine)."""
    path = folder / "manifest.json"
    manifest = json.loads(path.read_text())
    built = manifest["library"]
    cc = next((c for c in (os.environ.get("CC", ""), "cc", "gcc") if c and shutil.which(c)), None)
    if cc is None:
        raise EdgeError("no C compiler (cc, gcc or $CC) to rebuild the library with")
    sources = sorted(f"src/{p.name}" for p in (folder / "src").glob("*.c"))
    done = subprocess.run([cc, *built["cflags"], "-o", built["library"], *sources, "-lm"], cwd=folder,
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise EdgeError(f"{cc} failed: {(done.stderr.strip().splitlines() or ['no output'])[-1]}")
    library = (folder / built["library"]).read_bytes()
    version = subprocess.run([cc, "--version"], capture_output=True, text=True).stdout.splitlines()
    built.update(platform=f"{sys.platform}-{platform.machine()}", sha256=hashlib.sha256(library).hexdigest(),
                 bytes=len(library), compiler=(version or [cc])[0], rebuilt=True)
    path.write_text(json.dumps(manifest, indent=2) + "\n")
    return built


def _number(value: object, name: str, row: int) -> float:
    if isinstance(value, bool | int | float):
        return float(value)
    try:
        return float(str(value))
    except ValueError:
        raise EdgeError(f"row {row + 1}: feature {name!r} must be a number, got {str(value)[:40]!r}") from None


def read_rows(stream: io.TextIOBase, fmt: str, features: Iterable[str]) -> list[dict[str, object]]:
    """Feature rows from JSON lines (one object a line) or CSV with a header."""
    if fmt == "csv":
        reader = csv.DictReader(stream)
        header = reader.fieldnames or []
        if not set(header) & set(features):
            raise EdgeError(f"the CSV header names none of the model's features ({', '.join(list(features)[:5])}, …)")
        return [dict(r) for r in reader]
    rows: list[dict[str, object]] = []
    for number, line in enumerate(stream, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as exc:
            raise EdgeError(f"line {number} is not JSON: {exc}") from None
        if not isinstance(row, dict):
            raise EdgeError(f"line {number} must be a JSON object of feature values, not {type(row).__name__}")
        rows.append(row)
    return rows


def _finite(value: object) -> object:
    return None if isinstance(value, float) and not math.isfinite(value) else value


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Score feature rows with this edge artifact.")
    parser.add_argument("input", nargs="?", default="-", help="a .jsonl or .csv file (default: stdin)")
    parser.add_argument("--format", choices=("jsonl", "csv"), help="default: from the file name, else jsonl")
    parser.add_argument("--artifact", type=Path, default=HERE, help="the artifact folder (default: this one)")
    parser.add_argument("--rebuild", action="store_true", help="build the library for this machine and exit")
    args = parser.parse_args(argv)
    fmt = args.format or ("csv" if str(args.input).endswith(".csv") else "jsonl")
    try:
        if args.rebuild:
            built = rebuild(args.artifact)
            print(f"rebuilt {built['library']} for {built['platform']} ({built['bytes']} bytes)")
            return 0
        model = EdgeModel(args.artifact)
        if args.input == "-":
            rows = read_rows(sys.stdin, fmt, model.features)
        else:
            with open(args.input, newline="", encoding="utf-8") as stream:
                rows = read_rows(stream, fmt, model.features)
        outputs = model.predict(rows)
    except (EdgeError, OSError) as exc:
        print(f"predict.py: {exc}", file=sys.stderr)
        return 2
    out = sys.stdout
    for output in outputs:
        out.write(json.dumps({k: _finite(v) for k, v in model.answer(output).items()}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
