#!/usr/bin/env python3
"""PNG chart of a ``bench_rw_workflows.py`` report (its ``--json`` output).

    python bench/rw_plots.py report.json plots/      # or bench_rw_workflows.py ... --plot plots/

Writes ``rw_workflows.png``, two panels, medians over the report's rounds:

* left: each step's time on every target divided by tmpfs's (log scale; the
  issue's goals drawn at 2x and 5x), and the total;
* right: wsfs's time divided by each passthrough's (below 1: wsfs faster),
  when the report has the passthrough targets.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mount_plots import _bars, _figure, _save  # noqa: E402

SHORT = {"git checkout old+back": "git checkout\nold+back", "venv + pip install": "venv +\npip install",
         "tar -xzf (C project)": "tar -xzf", "git log | wc -l": "git log"}


def medians(report: dict[str, Any]) -> dict[str, dict[str, float]]:
    """{target: {step: median seconds, ..., "total": their sum}}."""
    rounds = report["rounds"]
    out: dict[str, dict[str, float]] = {}
    for t in rounds[0]:
        steps = list(rounds[0][t]["steps"])
        m: dict[str, float] = {}
        for s in steps:
            v = sorted(r[t]["steps"][s] for r in rounds)
            m[s] = v[len(v) // 2]
        m["total"] = sum(m.values())  # the sum of the medians, as bench_rw_workflows.py's table
        out[t] = m
    return out


def plot(report: dict[str, Any], out: Path) -> Path:
    med = medians(report)
    steps = list(med["tmpfs"])
    groups = [SHORT.get(s, s) for s in steps]
    floors = [t for t in med if "passthrough" in t]
    fig, axes = _figure(2 if floors and "wsfs" in med else 1,
                        f"developer workflows on a read-write mount, median of {len(report['rounds'])} round(s)")
    ax = axes[0]
    series = {t: [(med[t][s] / med["tmpfs"][s], False) for s in steps] for t in med if t != "tmpfs"}
    _bars(ax, groups, series)
    for y, label in ((2, "2x (overall goal)"), (5, "5x (per-step goal)")):
        ax.axhline(y, color="grey", linestyle="--", linewidth=0.8)
        ax.annotate(label, (len(steps) - 0.5, y), ha="right", va="bottom", fontsize=7, color="grey")
    ax.set_title("time / tmpfs's time (lower is better)")
    ax.set_ylabel("ratio (log)")
    ax.legend(fontsize=7)
    if len(axes) > 1:
        ax = axes[1]
        series = {f"wsfs / {t}": [(med["wsfs"][s] / med[t][s], False) for s in steps] for t in floors}
        _bars(ax, groups, series)
        ax.axhline(1, color="grey", linestyle="--", linewidth=0.8)
        ax.set_title("wsfs's time / a passthrough's time (below 1: wsfs faster)")
        ax.set_ylabel("ratio (log)")
        ax.legend(fontsize=7)
    for a in axes:
        for label in a.get_xticklabels():
            label.set_rotation(30)
            label.set_ha("right")
    return _save(fig, out / "rw_workflows.png")


def main() -> int:
    if len(sys.argv) != 3:
        raise SystemExit(__doc__.split("\n\n")[1].strip())
    out = Path(sys.argv[2])
    out.mkdir(parents=True, exist_ok=True)
    print(plot(json.loads(Path(sys.argv[1]).read_text()), out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
