#!/usr/bin/env python3
"""PNG charts of a ``bench_mount.py`` report (its ``--json`` output, or the dict it builds).

    python bench/mount_plots.py report.json plots/      # or bench_mount.py ... --plot plots/

Writes, one figure per idea, grouped by added RTT, log scales where the values span decades:

* ``steps.png``: seconds of each step (mount + first ls, find -ls, read all, warm re-read, the
  large file) for every mount: wsfs, wsfs with its access profile, rclone, s3fs, squashfuse_ll
  and the local directory (no network); hatched bars were stopped at the peers' cap;
* ``vs_peers.png``: wsfs time / the other mount's time per step (below 1: wsfs faster);
* ``vs_floors.png``: every byte of the tree usable (mount + ls + find + read all, or download
  and write), divided by the tar.zst floor (one GET, zstd -d, tar -x);
* ``large_file.png``: sequential MB/s on the cold large file and on the medium files, random 4 KiB
  reads/s on the cold large file;
* ``usable.png`` (``--workload npm``/``sdist``): the time until usable.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

MB = 1_000_000
SMALL = ("mount", "first ls", "find -ls", "read all (tar)")
STEPS = (("_first_ls", "mount +\nfirst ls"), ("find -ls", "find -ls"), ("read all (tar)", "read all"),
         ("warm re-read", "warm\nre-read"), ("big file (cat)", "large file\n(cat)"))
PEER_LABELS = {"rclone": "rclone", "rclone-full": "rclone full cache", "s3fs": "s3fs"}
NAN = float("nan")
# one colour per design in every figure (a ratio "wsfs / X" takes X's)
COLORS = {"wsfs": "C0", "wsfs + profile": "C1", "rclone": "C2", "rclone full cache": "C3", "s3fs": "C4",
          "squashfuse_ll (local)": "C5", "local dir": "C7", "boto3 download_file": "C6", "one GET": "C8",
          "naive 16 threads": "C9", "naive 64 threads": "olive", "naive 64 threads (download first)": "olive",
          "tar.zst (download first)": "C8", "wsfs+commit": "C9", "wsfs+commit S3": "olive",
          "C passthrough": "C3", "py passthrough": "C1", "ext4": "C7"}  # (rw_plots.py's targets)


def mounts(report: dict[str, Any], key: str) -> dict[str, dict[str, tuple[float, bool]]]:
    """{design: {step: (seconds, stopped at the cap)}} at RTT *key*: wsfs, peers, then local floors."""
    s = report["summary"]
    r = s["rtt"][key]
    out: dict[str, dict[str, tuple[float, bool]]] = {}
    designs = [("wsfs", r["wsfs"]), ("wsfs + profile", r.get("wsfs_profiled"))]
    designs += [(PEER_LABELS.get(n, n), d) for n, d in r["peers"].items()]
    for label, d in designs:
        if not d or "error" in d:
            continue
        sec, cap = d["seconds"], d["capped"]
        out[label] = {step: (sec.get(step, NAN), step in cap or (step == "_first_ls" and "first ls" in cap))
                      for step, _ in STEPS}
        rps = d.get("random_reads_per_s")  # measured over the reads done, also when stopped
        out[label]["random 4k"] = (1 / rps if rps and rps == rps else NAN, False)
    for label, f in (("squashfuse_ll (local)", s.get("squashfuse") or {}), ("local dir", s.get("local") or {})):
        if not f:
            continue
        steps = {step: (f.get(step, NAN), False) for step, _ in STEPS}
        steps["_first_ls"] = (f.get("mount", 0.0) + f.get("first ls", NAN), False)
        rps = f.get("_random_reads_per_s")
        steps["random 4k"] = (1 / rps if rps else NAN, False)
        out[label] = steps
    return out


def _bars(ax: Any, groups: list[str], series: dict[str, list[tuple[float, bool]]], *, mark: str = ">",
          log: bool = True) -> None:
    """Grouped bars: one group per entry of *groups*, one bar per series; (value, hatched) pairs, a
    hatched bar topped with *mark* (a bound: the value was stopped at the cap)."""
    import numpy as np

    n = max(1, len(series))
    width = 0.8 / n
    x = np.arange(len(groups))
    for i, (name, vals) in enumerate(series.items()):
        heights = [v if v == v and v > 0 else 0 for v, _ in vals]
        bars = ax.bar(x + (i - (n - 1) / 2) * width, heights, width, label=name,
                      color=COLORS.get(name.removeprefix("wsfs / ")))
        for bar, (_, hatched) in zip(bars, vals, strict=True):
            if hatched:
                bar.set_hatch("//")
                ax.annotate(mark, (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom",
                            fontsize=8)
    ax.set_xticks(x)
    ax.set_xticklabels(groups, fontsize=8)
    if log:
        ax.set_yscale("log")
    ax.grid(axis="y", alpha=0.3)


def _figure(n: int, title: str) -> tuple[Any, list[Any]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, n, figsize=(6.5 * n, 4.8), squeeze=False)
    fig.suptitle(title)
    return fig, list(axes[0])


def _save(fig: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_steps(report: dict[str, Any], out: Path) -> Path:
    keys = list(report["summary"]["rtt"])
    fig, axes = _figure(len(keys), "seconds per step, cold (hatched: stopped at the cap; lower is better)")
    for ax, key in zip(axes, keys, strict=True):
        m = mounts(report, key)
        _bars(ax, [label for _, label in STEPS], {d: [v[s] for s, _ in STEPS] for d, v in m.items()})
        ax.set_title(f"added RTT {key} ms")
        ax.set_ylabel("seconds (log)")
    axes[-1].legend(fontsize=7)
    return _save(fig, out / "steps.png")


def plot_vs_peers(report: dict[str, Any], out: Path) -> Path:
    keys = list(report["summary"]["rtt"])
    steps = [*STEPS, ("random 4k", "random\n4 KiB read")]
    fig, axes = _figure(len(keys), "wsfs time / other mount's time (below 1: wsfs faster; hatched: the other was "
                        "stopped, wsfs faster still)")
    for ax, key in zip(axes, keys, strict=True):
        m = mounts(report, key)
        ws = m.get("wsfs", {})
        series = {}
        for d, v in m.items():
            if d.startswith("wsfs"):
                continue
            series[f"wsfs / {d}"] = [(ws[s][0] / v[s][0] if v[s][0] else NAN, v[s][1]) for s, _ in steps]
        _bars(ax, [label for _, label in steps], series, mark="<")
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_title(f"added RTT {key} ms")
        ax.set_ylabel("ratio (log)")
        ax.legend(fontsize=7)
    return _save(fig, out / "vs_peers.png")


def plot_vs_floors(report: dict[str, Any], out: Path) -> Path:
    s = report["summary"]
    keys = list(s["rtt"])
    series: dict[str, list[tuple[float, bool]]] = {}
    for key in keys:
        r = s["rtt"][key]
        tz = r["tarzst"]["seconds"]
        row = {"wsfs": r["wsfs"], "wsfs + profile": r.get("wsfs_profiled")}
        row.update({PEER_LABELS.get(n, n): d for n, d in r["peers"].items()})
        for label, d in row.items():
            if d and "error" not in d:
                series.setdefault(label, []).append((d["seconds"]["_total_small"] / tz, "_total_small" in d["capped"]))
        for name, label in (("naive16", "naive 16 threads"), ("naive64", "naive 64 threads")):
            if name in r:
                series.setdefault(label, []).append((r[name]["seconds"] / tz, False))
    for v in series.values():  # a design missing at some RTT
        v += [(NAN, False)] * (len(keys) - len(v))
    fig, (ax,) = _figure(1, "every byte of the tree usable / tar.zst floor (1 GET, zstd -d, tar -x)")
    _bars(ax, [f"RTT {k} ms" for k in keys], series)
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_ylabel("time / tar.zst time (log; hatched: stopped at the cap, a lower bound)")
    ax.legend(fontsize=7)
    return _save(fig, out / "vs_floors.png")


def plot_large_file(report: dict[str, Any], out: Path) -> Path:
    s = report["summary"]
    keys = list(s["rtt"])
    big_mb = report["big_bytes"] / MB
    mid_mb = report.get("mid_bytes", 0) / MB
    seq: dict[str, list[tuple[float, bool]]] = {}
    mid: dict[str, list[tuple[float, bool]]] = {}
    rnd: dict[str, list[tuple[float, bool]]] = {}
    for key in keys:
        r = s["rtt"][key]
        row = {"wsfs": r["wsfs"], "wsfs + profile": r.get("wsfs_profiled")}
        row.update({PEER_LABELS.get(n, n): d for n, d in r["peers"].items()})
        for label, d in row.items():
            if not d or "error" in d:
                continue
            cap = d["capped"]
            t = d["seconds"].get("big file (cat)", NAN)
            seq.setdefault(label, []).append((big_mb / t if t == t else NAN, "big file (cat)" in cap))
            if mid_mb:
                t = d["seconds"].get("mid files (cat)", NAN)
                mid.setdefault(label, []).append((mid_mb / t if t == t else NAN, "mid files (cat)" in cap))
            if label != "wsfs + profile":
                rnd.setdefault(label, []).append((d.get("random_reads_per_s", NAN), False))
        seq.setdefault("one GET", []).append((r["big_get"]["MB_per_s"], False))
        if "big_download" in r:
            seq.setdefault("boto3 download_file", []).append((r["big_download"]["MB_per_s"], False))
        if "mid_download" in r:
            mid.setdefault("boto3 download_file", []).append((r["mid_download"]["MB_per_s"], False))
    loc = s.get("local") or {}
    if loc.get("big file (cat)"):
        seq["local dir"] = [(big_mb / loc["big file (cat)"], False)] * len(keys)
    if loc.get("mid files (cat)"):
        mid["local dir"] = [(mid_mb / loc["mid files (cat)"], False)] * len(keys)
    if loc.get("_random_reads_per_s"):
        rnd["local dir"] = [(loc["_random_reads_per_s"], False)] * len(keys)
    for d in (seq, mid, rnd):
        for v in d.values():
            v += [(NAN, False)] * (len(keys) - len(v))
    fig, axes = _figure(3 if mid else 2, "large files, cold (higher is better; hatched: stopped at the cap)")
    a1, a2 = axes[0], axes[-1]
    groups = [f"RTT {k} ms" for k in keys]
    _bars(a1, groups, seq)
    a1.set_title(f"{big_mb * MB / 2**20:,.0f} MiB file, sequential read, MB/s")
    a1.legend(fontsize=7)
    if mid:
        n = report["mid_count"]
        _bars(axes[1], groups, mid)
        axes[1].set_title(f"{n} x {mid_mb * MB / 2**20 / n:,.0f} MiB files, one after the other, MB/s")
        axes[1].legend(fontsize=7)
    _bars(a2, groups, rnd)
    a2.set_title(f"{report.get('random_reads', 2000):,} random 4 KiB reads one after the other, reads/s")
    a2.legend(fontsize=7)
    return _save(fig, out / "large_file.png")


def plot_usable(report: dict[str, Any], out: Path) -> Path | None:
    s = report["summary"]
    keys = list(s["rtt"])
    series: dict[str, list[tuple[float, bool]]] = {}
    for key in keys:
        r = s["rtt"][key]
        row = {"wsfs": r["wsfs"]}
        row.update({PEER_LABELS.get(n, n): d for n, d in r["peers"].items()})
        for label, d in row.items():
            u = None if "error" in d else d.get("usable")
            if u:
                t = d["usable_mount_s"] + sum(v for k, v in u.items() if not k.startswith("_"))
                series.setdefault(label, []).append((t, bool(u["_capped"])))
        for name, label in (("naive64", "naive 64 threads (download first)"), ("tarzst", "tar.zst (download first)")):
            if name in r and "usable" in r[name]:
                u = r[name]["usable"]
                series.setdefault(label, []).append(
                    (r[name]["seconds"] + sum(v for k, v in u.items() if not k.startswith("_")), False))
    if not series:
        return None
    if "local_usable" in s:
        u = s["local_usable"]
        series["local dir"] = [(sum(v for k, v in u.items() if not k.startswith("_")), False)] * len(keys)
    for v in series.values():
        v += [(NAN, False)] * (len(keys) - len(v))
    fig, (ax,) = _figure(1, "time until usable, cold (mount + the workload's require()/import commands)")
    _bars(ax, [f"RTT {k} ms" for k in keys], series)
    ax.set_ylabel("seconds (log)")
    ax.legend(fontsize=7)
    return _save(fig, out / "usable.png")


def write_plots(report: dict[str, Any], out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = [plot_steps(report, out), plot_vs_peers(report, out), plot_vs_floors(report, out),
             plot_large_file(report, out), plot_usable(report, out)]
    return [p for p in paths if p is not None]


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit("usage: mount_plots.py REPORT.json OUTDIR")
    for p in write_plots(json.loads(Path(sys.argv[1]).read_text()), Path(sys.argv[2])):
        print(p)
