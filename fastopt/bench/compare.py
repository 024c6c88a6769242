"""`fastopt-bench compare old.json new.json`: time ratios per measurement, regressions flagged.

A measurement regresses when the new run takes more than (1 + threshold) times the old run's time per step (default
threshold 0.10, i.e. more than 10% slower). Absolute times only mean something on the same machine: when the two
files come from different machines, compare says so and compares % of roofline instead, which is measured in each
run against that run's own stream.
"""

from __future__ import annotations

import json

KEY = ("device", "workload", "dtype", "optimizer", "impl")


def load(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


def _same_machine(a: dict, b: dict) -> bool:
    ma, mb = a.get("machine", {}), b.get("machine", {})
    gpu_a, gpu_b = (ma.get("gpu") or {}).get("name"), (mb.get("gpu") or {}).get("name")
    return ma.get("cpu") == mb.get("cpu") and ma.get("cpu_count") == mb.get("cpu_count") and gpu_a == gpu_b


def compare(old: dict, new: dict, threshold: float = 0.10, metric: str | None = None) -> dict:
    """Match measurements by (device, workload, dtype, optimizer, impl). For metric "time" the ratio is new / old
    time per step (> 1 is slower); for "roofline" it is old / new % of roofline (> 1 is further from the limit)."""
    if metric is None:
        metric = "time" if _same_machine(old, new) else "roofline"
    index = {tuple(r[k] for k in KEY): r for r in old.get("records", []) if "time_s" in r}
    rows = []
    for r in new.get("records", []):
        if "time_s" not in r:
            continue
        key = tuple(r[k] for k in KEY)
        o = index.get(key)
        if o is None:
            continue
        if metric == "time":
            ratio = r["time_s"] / o["time_s"]
        else:
            if not r.get("roofline_pct") or not o.get("roofline_pct"):
                continue
            ratio = o["roofline_pct"] / r["roofline_pct"]
        rows.append({**dict(zip(KEY, key)), "old": o["time_s"] if metric == "time" else o["roofline_pct"],
                     "new": r["time_s"] if metric == "time" else r["roofline_pct"], "ratio": ratio,
                     "regression": ratio > 1 + threshold})
    return {"metric": metric, "threshold": threshold, "same_machine": _same_machine(old, new), "rows": rows,
            "regressions": [row for row in rows if row["regression"]]}


def print_comparison(result: dict, console=None) -> None:
    unit = "ms" if result["metric"] == "time" else "% roofline"
    scale = 1e3 if result["metric"] == "time" else 1.0
    if not result["same_machine"]:
        print("note: the two runs come from different machines; comparing % of roofline, not times")
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        Console = None
    if Console is None:
        for row in result["rows"]:
            flag = "  REGRESSION" if row["regression"] else ""
            print(" ".join(str(row[k]) for k in KEY), f"{row['old'] * scale:.3f} -> {row['new'] * scale:.3f} {unit}",
                  f"x{row['ratio']:.3f}{flag}")
    else:
        console = console or Console()
        table = Table(title=f"fastopt-bench compare ({result['metric']}; regression: ratio > "
                            f"{1 + result['threshold']:.2f})")
        for name in KEY + (f"old {unit}", f"new {unit}", "ratio", ""):
            table.add_column(name, justify="right" if name.startswith(("old", "new", "ratio")) else "left")
        for row in result["rows"]:
            table.add_row(*(str(row[k]) for k in KEY), f"{row['old'] * scale:.3f}", f"{row['new'] * scale:.3f}",
                          f"{row['ratio']:.3f}", "REGRESSION" if row["regression"] else "",
                          style="bold red" if row["regression"] else None)
        console.print(table)
    n = len(result["regressions"])
    print(f"{len(result['rows'])} measurements compared, {n} regression{'s' if n != 1 else ''} "
          f"(> {result['threshold']:.0%} worse)")
