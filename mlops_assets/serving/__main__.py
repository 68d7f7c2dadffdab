"""`python -m mlops_assets.serving [--host 127.0.0.1] [--port 8000] [--workers 1]`: the prediction service.

Every other option comes from the environment (`MLOPS_SERVING_*`, see config.py), so all workers
share it; the configuration and the project file are validated here first, to fail before any
worker starts. The workers' metrics go to a fresh folder under the state folder
(`<state>/serving_metrics/<launcher pid>`), removed when the service stops, so /metrics in any worker
reports the whole fleet.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
from pathlib import Path

import psutil
import uvicorn

from mlops_assets.project.loading import load_project
from mlops_assets.serving.config import from_env
from mlops_assets.serving.schemas import request_models

METRICS_FOLDER = "serving_metrics"
MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"  # read by prometheus_client when it is imported


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m mlops_assets.serving", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1: local only)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--workers", type=int, default=1, help="worker processes (each loads the model)")
    parser.add_argument("--log-level", default="info")
    parser.add_argument(
        "--access-log", action="store_true", help="uvicorn access log (off: costs throughput)"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    config = from_env()
    request_models(load_project(config.project_path).spec, config.max_batch)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    folder = fresh_metrics_folder(config.state_dir)
    os.environ[MULTIPROCESS_ENV] = str(folder)  # before any worker imports prometheus_client
    try:
        serve(args, config.keep_alive_seconds)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def fresh_metrics_folder(state_dir: Path) -> Path:
    """An empty folder for this launch's metrics; folders of launchers no longer running are removed
    (prometheus_client needs a clean folder per run: old files would add to the new counts)."""
    root = state_dir / METRICS_FOLDER
    root.mkdir(parents=True, exist_ok=True)
    for old in root.iterdir():
        if old.is_dir() and old.name.isdigit() and not psutil.pid_exists(int(old.name)):
            shutil.rmtree(old, ignore_errors=True)
    folder = root / str(os.getpid())
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    return folder


def serve(args: argparse.Namespace, keep_alive: int) -> None:
    uvicorn.run(
        "mlops_assets.serving.app:create_app",
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        loop="uvloop",
        http="httptools",
        log_level=args.log_level,
        access_log=args.access_log,
        timeout_keep_alive=keep_alive,
    )


if __name__ == "__main__":
    main()
