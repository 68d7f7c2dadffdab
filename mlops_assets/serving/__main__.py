"""`python -m mlops_assets.serving [--host 127.0.0.1] [--port 8000] [--workers 1]`: the prediction service.

Every other option comes from the environment (`MLOPS_SERVING_*`, see config.py), so all workers
share it; the configuration and the project file are validated here first, to fail before any
worker starts.
"""

from __future__ import annotations

import argparse
import logging

import uvicorn

from mlops_assets.project.loading import load_project
from mlops_assets.serving.config import from_env
from mlops_assets.serving.schemas import request_models


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
        timeout_keep_alive=config.keep_alive_seconds,
    )


if __name__ == "__main__":
    main()
