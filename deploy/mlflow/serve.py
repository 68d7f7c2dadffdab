#!/usr/bin/env python3
"""Start an `mlflow server` for a team: PostgreSQL stores, proxied artifacts, basic auth.

Everything comes from the environment so no secret is ever written to the repository or disk:

  MLOPS_MLFLOW_BACKEND_URL     tracking + registry store, e.g. postgresql://mlflow@db:5432/mlops_mlflow
  MLOPS_MLFLOW_AUTH_DB_URL     users/permissions store, a database of its own
  MLOPS_MLFLOW_ARTIFACTS       where the server keeps artifacts (s3://bucket/path, /mnt/volume, ...)
  MLFLOW_AUTH_ADMIN_PASSWORD   admin password, used when the admin user is first created (required)
  MLFLOW_AUTH_ADMIN_USERNAME   admin user name (default: admin)
  MLFLOW_FLASK_SERVER_SECRET_KEY  CSRF signing key, the same on every replica (required)
  MLOPS_MLFLOW_ALLOWED_HOSTS   accepted Host headers (default: 127.0.0.1:<port>,localhost:<port>)
  MLOPS_MLFLOW_SERVER_DIR      where the rendered basic_auth.ini goes ($MLOPS_STATE_DIR/mlflow_server)

`postgresql://` URLs get the psycopg2 driver named (SQLAlchemy 2.1 maps the bare scheme to
psycopg 3, which the project does not install). The server replaces this process (exec), so a
supervisor or a test can stop it by its pid / process group.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from string import Template

HERE = Path(__file__).resolve().parent
TEMPLATE = HERE / "basic_auth.ini.template"
REQUIRED = ("MLOPS_MLFLOW_BACKEND_URL", "MLOPS_MLFLOW_AUTH_DB_URL", "MLOPS_MLFLOW_ARTIFACTS",
            "MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY")


def sqlalchemy_url(url: str) -> str:
    """Name the psycopg2 driver for PostgreSQL URLs; other URLs (sqlite for a local try) unchanged."""
    for scheme in ("postgresql://", "postgres://"):
        if url.startswith(scheme):
            return "postgresql+psycopg2://" + url.removeprefix(scheme)
    return url


def render_auth_config(env: dict[str, str], target: Path) -> Path:
    """Write basic_auth.ini from the template (owner-only); '%' doubled for configparser."""
    values = {
        "database_uri": sqlalchemy_url(env["MLOPS_MLFLOW_AUTH_DB_URL"]),
        "admin_username": env.get("MLFLOW_AUTH_ADMIN_USERNAME") or "admin",
        "default_permission": env.get("MLOPS_MLFLOW_DEFAULT_PERMISSION") or "READ",
    }
    text = Template(TEMPLATE.read_text()).substitute({k: v.replace("%", "%%") for k, v in values.items()})
    target.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    return target


def server_command(env: dict[str, str], host: str, port: int, workers: int) -> list[str]:
    """The `mlflow server` invocation (flags as of MLflow 3.17, see `mlflow server --help`)."""
    allowed = env.get("MLOPS_MLFLOW_ALLOWED_HOSTS") or f"127.0.0.1:{port},localhost:{port}"
    return [
        sys.executable, "-m", "mlflow", "server",
        "--backend-store-uri", sqlalchemy_url(env["MLOPS_MLFLOW_BACKEND_URL"]),
        "--serve-artifacts", "--artifacts-destination", env["MLOPS_MLFLOW_ARTIFACTS"],
        "--host", host, "--port", str(port), "--workers", str(workers),
        "--allowed-hosts", allowed,
        "--app-name", "basic-auth",
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (0.0.0.0 inside a container)")
    parser.add_argument("--port", type=int, default=5000)
    parser.add_argument("--workers", type=int, default=4)
    args = parser.parse_args(argv)
    env = dict(os.environ)
    missing = [name for name in REQUIRED if not env.get(name)]
    if missing:
        print(f"serve.py: refusing to start, set {', '.join(missing)} (see the docstring)", file=sys.stderr)
        return 2
    state = Path(env.get("MLOPS_STATE_DIR") or HERE.parent.parent / ".mlops_state")
    server_dir = Path(env.get("MLOPS_MLFLOW_SERVER_DIR") or state / "mlflow_server")
    env["MLFLOW_AUTH_CONFIG_PATH"] = str(render_auth_config(env, server_dir / "basic_auth.ini"))
    # MLflow's GenAI job runner (huey workers) is unused here; MLFLOW_SERVER_ENABLE_JOB_EXECUTION=true enables it.
    env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    command = server_command(env, args.host, args.port, args.workers)
    os.execve(command[0], command, env)


if __name__ == "__main__":
    sys.exit(main())
