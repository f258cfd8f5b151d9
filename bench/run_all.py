"""Run every benchmark and print its figures."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

for script in ("startup.py", "tap_to_contactor.py", "memory.py", "durable_queue.py"):
    subprocess.run([sys.executable, str(HERE / script)], check=False)
