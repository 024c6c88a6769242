"""Turning a results dict into a terminal table (rich), a Markdown file, a JSON file and PNG plots."""

from __future__ import annotations

import json
import math
import os

BASELINE_FOR = {"cpu": "numpy", "gpu": "cupy-chain"}
IMPL_ORDER = ("cuda", "cpu", "numpy", "cupy-chain", "torch-fused", "torch-foreach")


def _impl_key(name):
    return IMPL_ORDER.index(name) if name in IMPL_ORDER else len(IMPL_ORDER)


def _fmt(value, spec, missing="-"):
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return missing
    return format(value, spec)


def _ratio(record, other):
    value = record.get("vs", {}).get(other)
    return None if value is None else value


def rows(results: dict) -> tuple[list[str], list[list[str]]]:
    """The table every output shares: one row per measurement, grouped by device, workload, dtype, optimizer."""
    has_gpu = any(r["device"] == "gpu" for r in results["records"])
    header = ["device", "workload", "dtype", "optimizer", "impl", "B/param", "ms/step", "GB/s", "% roofline",
              "x baseline", "x torch-fused"]
    if has_gpu:
        header.append("host us")
    body = []
    records = sorted(results["records"], key=lambda r: (r["device"], r["kind"] != "single", r["params"],
                                                        r["workload"], r["dtype"], r["optimizer"],
                                                        _impl_key(r["impl"])))
    for r in records:
        if "error" in r:
            row = [r["device"], r["workload"], r["dtype"], r["optimizer"], r["impl"], "-", "n/a", "", "", "", ""]
        else:
            base = BASELINE_FOR[r["device"]]
            row = [r["device"], r["workload"], r["dtype"], r["optimizer"], r["impl"], str(r["bytes_per_param"]),
                   _fmt(r["time_s"] * 1e3, ".3f"), _fmt(r["gbps"], ".1f"), _fmt(r.get("roofline_pct"), ".0f"),
                   "" if r["impl"] == base else _fmt(_ratio(r, base), ".2f"),
                   "" if r["impl"] == "torch-fused" else _fmt(_ratio(r, "torch-fused"), ".2f")]
        if has_gpu:
            row.append(_fmt(r.get("host_us"), ".1f"))
        body.append(row)
    return header, body


def notes(results: dict) -> list[str]:
    """Why some measurements are missing: one line per distinct (contender, reason)."""
    seen = {}
    for r in results["records"]:
        if "error" in r:
            seen.setdefault((r["impl"], r["error"]), []).append(r["optimizer"])
    return [f"{impl} n/a for {', '.join(dict.fromkeys(opts))}: {error}" for (impl, error), opts in seen.items()]


def roofline_rows(results: dict) -> tuple[list[str], list[list[str]]]:
    header = ["device", "workload", "dtype", "kind", "reads", "writes", "bytes/step", "ms", "GB/s"]
    body = []
    for r in results["rooflines"]:
        if "error" in r:
            body.append([r["device"], r["workload"], r["dtype"], r["kind"], str(r.get("reads", "")),
                         str(r.get("writes", "")), "", "n/a", r["error"][:60]])
            continue
        body.append([r["device"], r["workload"], r["dtype"], r["kind"], str(r.get("reads", "")),
                     str(r.get("writes", "")), str(r["bytes"]), _fmt(r["time_s"] * 1e3, ".3f"),
                     _fmt(r["gbps"], ".1f")])
    return header, body


def machine_line(results: dict) -> str:
    m = results["machine"]
    parts = [m.get("cpu") or "?", f"{m.get('cpu_count')} cores"]
    if m.get("gpu"):
        parts.append(m["gpu"]["name"])
    v = m.get("versions", {})
    parts.append(", ".join(f"{k} {val}" for k, val in v.items() if val))
    return "; ".join(parts)


def headline_lines(results: dict) -> list[str]:
    from .engine import headline
    lines = []
    for device, h in headline(results).items():
        vs = h["vs"]
        bits = [f"{device}: {h['optimizer']} fp32 {h['workload']}: {h['time_ms']:.2f} ms/step, {h['gbps']:.1f} GB/s"]
        if h.get("roofline_pct") is not None:
            bits.append(f"{h['roofline_pct']:.0f}% of the measured stream")
        elif h.get("roofline_note"):
            bits.append(h["roofline_note"])
        for other in ("numpy", "cupy-chain", "torch-fused", "torch-foreach"):
            if other in vs:
                bits.append(f"{vs[other]:.1f}x {other}")
        lines.append(", ".join(bits))
    return lines


def print_table(results: dict, console=None) -> None:
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        print(markdown(results))
        return
    if console is None:
        import shutil
        console = Console(width=max(shutil.get_terminal_size((160, 40)).columns, 120))
    header, body = rows(results)
    # Columns holding one value throughout (one device, one dtype) go into the title instead.
    constant = [i for i, name in enumerate(header) if name in ("device", "dtype") and len({r[i] for r in body}) == 1]
    title = f"fastopt-bench - {machine_line(results)}"
    if body and constant:
        title += " - " + ", ".join(body[0][i] for i in constant)
    keep = [i for i in range(len(header)) if i not in constant]
    header = [header[i] for i in keep]
    body = [[row[i] for i in keep] for row in body]
    table = Table(title=title, show_lines=False)
    for name in header:
        table.add_column(name, justify="left" if name in ("device", "workload", "dtype", "optimizer", "impl")
                         else "right", no_wrap=True)
    last = None
    i_impl = header.index("impl")
    for row in body:
        group = tuple(row[:i_impl - 1])   # device, workload, dtype: a rule between groups
        if last is not None and group != last:
            table.add_section()
        last = group
        style = "bold" if row[i_impl] in ("cpu", "cuda") else None
        table.add_row(*row, style=style)
    console.print(table)
    for line in notes(results):
        console.print(line)
    rheader, rbody = roofline_rows(results)
    rt = Table(title="measured roofline (streams with each optimizer's access pattern)")
    for name in rheader:
        rt.add_column(name, justify="right" if name in ("reads", "writes", "bytes/step", "ms", "GB/s") else "left")
    for row in rbody:
        rt.add_row(*row)
    console.print(rt)
    for line in headline_lines(results):
        console.print(line)


def _pct(value):
    return "?" if value is None else f"{value:.0%}"


def _loads(values):
    return "?" if not values else " ".join(f"{v:.2f}" for v in values)


def _md_table(header, body) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(cell.replace("|", "/") for cell in row) + " |" for row in body]
    return "\n".join(out)


def markdown(results: dict) -> str:
    m = results["machine"]
    lines = [f"# fastopt-bench results ({results['date']})", "",
             f"- machine: {machine_line(results)}",
             f"- CPUs busy before / after the run: {_pct(m.get('cpu_busy_start'))} / {_pct(m.get('cpu_busy_end'))}; "
             f"load average at start / end: {_loads(m.get('load_average_start'))} / "
             f"{_loads(m.get('load_average_end'))}",
             f"- command: `fastopt-bench {' '.join(results['config'].get('argv') or [])}`",
             f"- elapsed: {results.get('elapsed_s', 0):.0f} s", ""]
    heads = headline_lines(results)
    if heads:
        lines += ["## Headline", ""] + [f"- {h}" for h in heads] + [""]
    lines += ["## Every measurement", "",
              "`x baseline`: how many times faster than the NumPy reference (CPU) or the CuPy chain (GPU); "
              "`x torch-fused`: than torch.optim with fused=True on the same device; `% roofline`: achieved GB/s "
              "over the stream with the same access pattern measured in this run.", ""]
    lines.append(_md_table(*rows(results)))
    lines += [""] + [f"- {line}" for line in notes(results)]
    lines += ["", "## Measured roofline", "",
              "Each stream is measured twice in a block (before and after the contenders); the faster counts.", ""]
    lines.append(_md_table(*roofline_rows(results)))
    if results.get("skipped"):
        lines += ["", "## Skipped", ""] + [f"- {k}: {v}" for k, v in results["skipped"].items()]
    return "\n".join(lines) + "\n"


def write_json(results: dict, path: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(results, f, indent=1, default=_jsonable)
        f.write("\n")


def _jsonable(value):
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, (set, tuple)):
        return list(value)
    return str(value)


def write_markdown(results: dict, path: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        f.write(markdown(results))


# ---- plots --------------------------------------------------------------------------------------------------------

def write_plots(results: dict, directory: str, prefix: str = "") -> list[str]:
    """Per device and dtype: throughput vs size per contender with the measured roofline drawn in, one panel per
    optimizer; and % of roofline per optimizer at the largest single tensor. Returns the files written."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(directory, exist_ok=True)
    written = []
    ok = [r for r in results["records"] if "time_s" in r]
    keys = sorted({(r["device"], r["dtype"]) for r in ok})
    for device, dtype in keys:
        mine = [r for r in ok if r["device"] == device and r["dtype"] == dtype]
        singles = [r for r in mine if r["kind"] == "single"]
        optimizers = list(dict.fromkeys(r["optimizer"] for r in mine))
        impls = sorted({r["impl"] for r in mine}, key=_impl_key)
        colors = {name: plt.cm.tab10(i) for i, name in enumerate(impls)}
        tag = f"{prefix}{device}_{dtype}"

        if len({r["params"] for r in singles}) >= 1 and singles:
            cols = min(3, len(optimizers))
            nrows = math.ceil(len(optimizers) / cols)
            fig, axes = plt.subplots(nrows, cols, figsize=(4.2 * cols, 3.2 * nrows), squeeze=False, sharex=True)
            for ax, opt in zip(axes.flat, optimizers):
                for impl in impls:
                    pts = sorted((r["params"], r["gbps"]) for r in singles if r["optimizer"] == opt
                                 and r["impl"] == impl)
                    if pts:
                        ax.plot(*zip(*pts), marker="o", color=colors[impl], label=impl)
                roof = sorted({r["params"]: r["roofline_gbps"] for r in singles
                               if r["optimizer"] == opt and r.get("roofline_gbps")}.items())
                if roof:
                    ax.plot(*zip(*roof), color="black", linestyle="--", label="stream (roofline)")
                copies = sorted((c["params"], c["gbps"]) for c in results["rooflines"]
                                if c.get("kind") == "d2d_copy" and c["device"] == device and c["dtype"] == dtype
                                and "gbps" in c and any(s["params"] == c["params"] for s in singles))
                if copies:
                    ax.plot(*zip(*copies), color="gray", linestyle=":", label="d2d copy")
                ax.set_xscale("log", base=2)
                ax.set_title(opt, fontsize=10)
                ax.set_ylim(bottom=0)
                ax.grid(alpha=0.3)
            for ax in axes.flat[len(optimizers):]:
                ax.axis("off")
            for ax in axes[-1]:
                ax.set_xlabel("parameters (one tensor)")
            for ax in axes[:, 0]:
                ax.set_ylabel("GB/s (counted bytes)")
            handles, labels = axes.flat[0].get_legend_handles_labels()
            fig.suptitle(f"fastopt step throughput, {device} {dtype}", y=0.995, fontsize=11)
            fig.tight_layout(rect=(0, 0, 1, 0.92))
            fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.965), ncol=min(6, len(labels)),
                       fontsize=9)
            path = os.path.join(directory, f"{tag}_throughput.png")
            fig.savefig(path, dpi=110)
            plt.close(fig)
            written.append(path)

        pool = singles or mine
        largest = max(r["params"] for r in pool)
        at = [r for r in pool if r["params"] == largest and r.get("roofline_pct") is not None]
        if at:
            workload = at[0]["workload"]
            fig, ax = plt.subplots(figsize=(max(6.0, 1.0 * len(optimizers) + 2), 3.8))
            width = 0.8 / max(1, len(impls))
            for i, impl in enumerate(impls):
                xs, ys = [], []
                for j, opt in enumerate(optimizers):
                    hit = [r for r in at if r["optimizer"] == opt and r["impl"] == impl]
                    if hit:
                        xs.append(j + (i - (len(impls) - 1) / 2) * width)
                        ys.append(hit[0]["roofline_pct"])
                ax.bar(xs, ys, width=width, color=colors[impl], label=impl)
            ax.axhline(100, color="black", linestyle="--", linewidth=1)
            ax.set_xticks(range(len(optimizers)))
            ax.set_xticklabels(optimizers, rotation=20)
            ax.set_ylabel("% of measured roofline")
            ax.set_title(f"% of roofline per optimizer, {device} {dtype}, {workload} parameters")
            ax.legend(fontsize=8, ncol=min(6, len(impls)))
            ax.grid(axis="y", alpha=0.3)
            fig.tight_layout()
            path = os.path.join(directory, f"{tag}_roofline.png")
            fig.savefig(path, dpi=110)
            plt.close(fig)
            written.append(path)
    return written
