"""Shared bits of the benchmarks: a config file for a real `cpagent run` process."""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


VERSIONS = ("1.6", "2.0.1")
SUBPROTOCOLS = {"1.6": "ocpp1.6", "2.0.1": "ocpp2.0.1"}


def write_config(url: str, connectors: int = 1, identity: str = "BENCH-CP",
                 version: str = "1.6") -> Path:
    folder = Path(tempfile.mkdtemp(prefix="cpagent-bench-"))
    path = folder / "cpagent.toml"
    path.write_text(
        f'[charge_point]\nid = "{identity}"\n\n'
        f'[csms]\nurl = "{url}"\nocpp_version = "{version}"\n\n'
        f'[station]\nconnectors = {connectors}\ndata_dir = "{folder}"\n'
        f'control_socket = "{folder}/c.sock"\ntime_source = "system"\n\n'
        '[logging]\nlevel = "WARNING"\n'
    )
    return path


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


def median(values: list[float]) -> float:
    return statistics.median(values)


def agent_command(config: Path) -> list[str]:
    return [sys.executable, "-m", "cpagent", "run", "--config", str(config)]


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT)}


def beside(name: str, figures: dict[str, float], unit: str, lower_is_better: bool = True,
           limit: float = 1.1) -> str:
    """One line: the 1.6 and 2.0.1 figures and their ratio against the allowed one."""
    old, new = figures["1.6"], figures["2.0.1"]
    ratio = new / old if lower_is_better else old / new
    verdict = "ok" if ratio <= limit else "OVER"
    return (f"{name}: 1.6 {old:.3f} {unit}, 2.0.1 {new:.3f} {unit}; 2.0.1 / 1.6 = "
            f"{ratio:.2f} (limit {limit}) {verdict}")


def rss_kib(pid: int) -> int:
    """Resident memory of a process, from /proc."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")
