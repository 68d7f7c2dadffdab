"""`python -m mlops_assets.streaming --in DIR --out DIR [--follow] [--max-events N]`: score request events.

Every serving option comes from the environment as for the HTTP service (`MLOPS_SERVING_*`,
`MLOPS_PROJECT`, `MLOPS_STATE_DIR`, `MLFLOW_TRACKING_URI`). Bad arguments or configuration are one
line on stderr and exit code 2; a run that cannot go on (no governed champion, an input file
truncated under the consumer, the log refusing) is one line and exit code 1, nothing half-committed.
SIGTERM or SIGINT finishes the part in hand, commits it and exits 0. The last line on stdout is a
JSON summary (events, predictions, dead letters, duplicates skipped, parts, events per second).
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn

from mlops_assets.project.loading import ProjectError
from mlops_assets.serving.config import ConfigError, from_env
from mlops_assets.serving.service import NotReady, Service
from mlops_assets.streaming.consumer import Consumer, LogUnavailable
from mlops_assets.streaming.sink import Sink, SinkError
from mlops_assets.streaming.source import InputError

PROG = "python -m mlops_assets.streaming"


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a bad argument is one line (no usage block) and exit code 2."""

    def error(self, message: str) -> NoReturn:
        fail(message, 2)


def fail(message: str, code: int) -> NoReturn:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    raise SystemExit(code)


def positive(kind: Callable[[str], float]) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be positive, got {text}")
        return value
    return parse


def parser() -> argparse.ArgumentParser:
    top = OneLineParser(prog=PROG, description=__doc__.splitlines()[0])
    top.add_argument("--in", dest="source", type=Path, required=True, help="folder of *.jsonl request events")
    top.add_argument("--out", type=Path, required=True, help="sink folder (parts, dead letters, checkpoint)")
    top.add_argument("--follow", action="store_true", help="keep reading new lines and files until stopped")
    top.add_argument("--max-events", type=positive(int), help="stop after this many events (this run)")
    top.add_argument("--batch", type=positive(int), default=100, help="events per predict call (default 100)")
    top.add_argument("--part-events", type=positive(int), default=1000, help="events per sink part at most")
    top.add_argument("--poll-seconds", type=positive(float), default=0.1, help="idle wait when following")
    top.add_argument("--explain", action="store_true", help="add the top TreeSHAP contributions")
    top.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"])
    return top


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    source, out = args.source.resolve(), args.out.resolve()
    if not source.is_dir():
        fail(f"--in {args.source}: not a folder", 2)
    if out == source or source in out.parents:
        fail(f"--out {args.out}: must not be the input folder or inside it", 2)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = from_env()
        if args.batch > config.max_batch:
            fail(f"--batch {args.batch}: above the service's max_batch of {config.max_batch}", 2)
        sink = Sink.open(out, source)
        service = Service(config)
    except (ConfigError, ProjectError, SinkError, ValueError, OSError) as exc:
        fail(str(exc).splitlines()[0], 2)
    stop = threading.Event()
    previous = {signum: signal.signal(signum, lambda *_: stop.set()) for signum in (signal.SIGTERM, signal.SIGINT)}
    service.start()
    try:
        if not service.ready:
            fail(f"no governed champion of {service.project.model_name} is loaded (see the alerts and /health "
                 "of the service); nothing consumed", 1)
        consumer = Consumer(service, source, sink, args.batch, args.part_events, args.explain)
        counts = consumer.run(args.follow, args.max_events, args.poll_seconds, stop)
    except (InputError, LogUnavailable, NotReady, OSError) as exc:
        fail(str(exc) or "no model loaded", 1)
    finally:
        service.stop()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    print(json.dumps(counts.summary()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
