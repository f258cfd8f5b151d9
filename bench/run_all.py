"""Run every benchmark and print its figures."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

for script in ("versions.py", "startup.py", "tap_to_contactor.py", "memory.py",
               "durable_queue.py", "fault_to_contactor.py", "full_inventory.py",
               "hostile_frames.py", "tls_connect.py", "composite_schedule.py",
               "limit_change.py"):
    if (HERE / script).exists():
        subprocess.run([sys.executable, str(HERE / script)], check=False)
