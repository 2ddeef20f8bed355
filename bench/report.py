"""Turn compare.py's results into results.json, results.md (tables) and a PNG plot."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

LABELS = {"mergekit": "mergekit", "het": "mergekit-het"}


def _s(x: float | None) -> str:
    return "failed" if x is None else f"{x:.2f}"


def _gib(x: int | None) -> str:
    return "failed" if x is None else f"{x / 2**30:.2f} GiB"


def _ratio(a: float | None, b: float | None) -> str:
    return "–" if a is None or b is None or b == 0 else f"{a / b:.2f}x"


def _diff(row: dict) -> str:
    d = row["diff"]
    if d is None:
        return "random (not compared)" if row["method"].startswith("dare") else "–"
    text = f"{d['max_abs']:.3g} ({d['differing']:,} of {d['elements'] / 1e6:.1f}M elements differ)"
    return text + (f"; {len(d['problems'])} PROBLEMS" if d["problems"] else "")


def size_table(size: dict, tools: list[str]) -> list[str]:
    """One row per method: wall and CPU seconds, peak RSS (and GPU memory), ratios, max |Δ|."""
    pair = len(tools) == 2
    gpu = any(r["tools"][t]["gpu_peak_bytes"] is not None for r in size["methods"] for t in tools)
    columns: list[tuple[str, object]] = [(f"{LABELS[t]} s", lambda r, t=t: _s(r[t]["wall_s"])) for t in tools]
    if pair:
        columns.append(("speed-up (mergekit/het)", lambda r: _ratio(r["mergekit"]["wall_s"], r["het"]["wall_s"])))
    columns += [(f"{LABELS[t]} CPU s", lambda r, t=t: _s(r[t]["cpu_s"])) for t in tools]
    columns += [(f"{LABELS[t]} peak RSS", lambda r, t=t: _gib(r[t]["peak_rss_bytes"])) for t in tools]
    if pair:
        columns.append(("RSS ratio (mergekit/het)",
                        lambda r: _ratio(r["mergekit"]["peak_rss_bytes"], r["het"]["peak_rss_bytes"])))
    columns += [(f"{LABELS[t]} peak anon RSS", lambda r, t=t: _gib(r[t]["anon_rss_bytes"])) for t in tools]
    if gpu:
        columns += [(f"{LABELS[t]} GPU mem", lambda r, t=t: _gib(r[t]["gpu_peak_bytes"])) for t in tools]
    lines = ["| method | " + " | ".join(c[0] for c in columns) + (" | max abs Δ (float32) |" if pair else " |"),
             "|---" * (len(columns) + 1 + pair) + "|"]
    for row in size["methods"]:
        cells = [fn(row["tools"]) for _, fn in columns] + ([_diff(row)] if pair else [])
        lines.append(f"| {row['method']} | " + " | ".join(cells) + " |")
    f = size["floor"]
    lines.append("")
    if size.get("load_1min"):
        lines.append(f"1-minute load average when each run started: {min(size['load_1min']):.1f} to "
                     f"{max(size['load_1min']):.1f} (other processes on the machine; wall times grow with it, CPU times much less).")
    lines.append(f"Floor: warm read of all inputs ({f['input_bytes'] / 1e9:.2f} GB) {f['read_s']:.2f} s + write of "
                 f"one output-sized file ({f['output_bytes'] / 1e9:.2f} GB) {f['write_s']:.2f} s = **{f['floor_s']:.2f} s**.")
    return lines


def scaling_table(results: dict) -> list[str]:
    tools = results["tools"]
    head = ["size", "params/model", "input GB", "method", *(f"{LABELS[t]} s" for t in tools)]
    head += ["speed-up"] if len(tools) == 2 else []
    head += ["floor s"]
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for size in results["sizes"]:
        for row in size["methods"]:
            t = row["tools"]
            cells = [size["tag"], f"{size['params_per_model'] / 1e6:.0f}M", f"{size['floor']['input_bytes'] / 1e9:.2f}",
                     row["method"], *(_s(t[k]["wall_s"]) for k in tools)]
            cells += [_ratio(t["mergekit"]["wall_s"], t["het"]["wall_s"])] if len(tools) == 2 else []
            cells += [f"{size['floor']['floor_s']:.2f}"]
            lines.append("| " + " | ".join(cells) + " |")
    return lines


def plot(results: dict, path: Path) -> None:
    """One size: wall time per method and tool (bars). Several: wall time against input size (lines).
    The floor (warm read of the inputs + write of one output) is drawn in black."""
    sizes, tools = results["sizes"], results["tools"]
    methods = [r["method"] for r in sizes[0]["methods"]]

    def wall(size: dict, method: str, tool: str) -> float:
        y = next(r for r in size["methods"] if r["method"] == method)["tools"][tool]["wall_s"]
        return float("nan") if y is None else y

    fig, ax = plt.subplots(figsize=(7, 4.5))
    if len(sizes) == 1:
        width = 0.8 / len(tools)
        for j, tool in enumerate(tools):
            xs = [i + (j - (len(tools) - 1) / 2) * width for i in range(len(methods))]
            ax.bar(xs, [wall(sizes[0], m, tool) for m in methods], width, label=LABELS[tool])
        ax.axhline(sizes[0]["floor"]["floor_s"], color="k", ls=":", label="floor (read inputs + write output)")
        ax.set_xticks(range(len(methods)), methods)
        ax.set_xlabel(f"merge method ({sizes[0]['tag']}, {sizes[0]['floor']['input_bytes'] / 1e9:.2f} GB of inputs)")
    else:
        gb = [s["floor"]["input_bytes"] / 1e9 for s in sizes]
        for i, method in enumerate(methods):  # one colour per method, one line style per tool
            for tool, style in zip(tools, ("-o", "--s")):
                ax.plot(gb, [wall(s, method, tool) for s in sizes], style, color=f"C{i}", label=f"{LABELS[tool]} {method}")
        ax.plot(gb, [s["floor"]["floor_s"] for s in sizes], ":k", label="floor (read inputs + write output)")
        ax.set_xlabel("total input size (GB)")
    ax.set_ylabel("wall time (s)")
    m = results["machine"]
    ax.set_title(f"merge wall time, {m['device']}, {m['cpus']} CPUs" + (f", {m['gpu']}" if "gpu" in m else ""))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(results: dict, out: Path) -> str:
    """Write results.json, results.md and results.png under `out`; return the markdown."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    m, tools = results["machine"], results["tools"]
    lines = [f"Machine: {m['platform']}, {m['cpus']} CPUs, {m['memory_bytes'] / 2**30:.0f} GiB RAM, "
             f"torch {m['torch']}, device {m['device']}" + (f" ({m['gpu']})" if "gpu" in m else "") + f"; {results['started']}"
             + (f"; mergekit-het at {m['mergekit_het_commit']}." if m.get("mergekit_het_commit") else "."),
             "Startup (`--help`, imports only): " + ", ".join(f"{LABELS[k]} {v:.2f} s" for k, v in results["startup_s"].items())
             + f". Wall time is the median of {results['repeat']} run(s); peak RSS the max over runs."
             + (" INTERRUPTED: only the runs that finished are shown." if results.get("interrupted") else ""), ""]
    for size in results["sizes"]:
        spec = size["spec"]
        lines += [f"### {size['tag']}: base + {spec['experts']} experts, {size['params_per_model'] / 1e6:.1f}M params each, "
                  f"{spec['dtype']}" + (f" (mergekit-het {size['mergekit_het_commit']})" if size.get("mergekit_het_commit") else ""), ""]
        lines += size_table(size, tools) + [""]
    if len(results["sizes"]) > 1:
        lines += ["### Scaling", ""] + scaling_table(results) + [""]
    md = "\n".join(lines)
    (out / "results.md").write_text(md)
    plot(results, out / "results.png")
    return md
