"""What the command modules share: the stderr console, log set-up, and one line per training/evaluation row."""

from __future__ import annotations

import logging

from rich.console import Console

console = Console(stderr=True)


def _logging(level: str = "INFO") -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def _report(row: dict) -> None:
    console.print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))
