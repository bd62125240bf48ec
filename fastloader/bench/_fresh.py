"""Each benchmark measurement runs in a fresh Python process (no memory or warm state
inherited from the other library's run); this starts one and reads its JSON result."""
from __future__ import annotations

import json
import statistics
import subprocess
import sys


def run_fresh(module: str, *args, env: dict | None = None) -> dict:
    """`python -m module --one args...`; its last stdout line, as JSON."""
    cmd = [sys.executable, "-m", module, "--one", *map(str, args)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def medians(runs: list[dict]) -> dict:
    """The median of each field over several runs' results."""
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]}
