"""Where local state lives and which task runs: the one place that reads the environment."""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = PROJECT_ROOT / "data"
TASKS_DIR = Path(__file__).resolve().parent / "tasks"


def state_dir() -> Path:
    """All git-ignored local state lives under one folder (override with MLOPS_STATE_DIR)."""
    return Path(os.environ.get("MLOPS_STATE_DIR", PROJECT_ROOT / ".mlops_state")).resolve()


def task_path() -> Path:
    """The task config file: MLOPS_TASK is a path or the name of a file in mlops_assets/tasks."""
    value = os.environ.get("MLOPS_TASK", "flights")
    candidate = Path(value)
    if candidate.suffix in {".yaml", ".yml"}:
        return candidate.resolve()
    return TASKS_DIR / f"{value}.yaml"


def executor_name() -> str:
    """`in_process` (default: one process, no per-step start-up) or `multiprocess` (parallel steps)."""
    value = os.environ.get("MLOPS_EXECUTOR", "in_process")
    if value not in {"in_process", "multiprocess"}:
        raise ValueError(f"MLOPS_EXECUTOR must be 'in_process' or 'multiprocess', not {value!r}")
    return value


def alert_webhook() -> str:
    """Where alerts are posted besides the alert log (MLOPS_ALERT_WEBHOOK; empty = log only)."""
    return os.environ.get("MLOPS_ALERT_WEBHOOK", "")
