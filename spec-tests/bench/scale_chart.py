"""Draws the scale curve of spec-tests/bench/compare.sh: members (all long-polling, one
room, one message a second) against delivery p50/p99, send p50 and server peak RSS, for
Myelin and for Synapse at the sizes it finished.

    python scale_chart.py RUN_DIR OUT.svg SIZE [SIZE ...]
"""

import json
import os
import sys

import matplotlib

matplotlib.use("svg")
import matplotlib.pyplot as plt  # noqa: E402


def load(run_dir, name):
    path = os.path.join(run_dir, name + ".json")
    if not os.path.exists(path):
        return None
    value = json.load(open(path))
    return None if value.get("failed") else value


def series(run_dir, server, sizes):
    points = []
    for n in sizes:
        v = load(run_dir, f"{server}-curve-{n}")
        if v is not None:
            points.append((n, v))
    return points


def main():
    run_dir, out, *sizes = sys.argv[1:]
    sizes = [int(n) for n in sizes]
    fig, (latency, memory) = plt.subplots(1, 2, figsize=(12, 4.8))
    styles = {"myelin": "tab:blue", "synapse": "tab:orange"}
    for server, colour in styles.items():
        points = series(run_dir, server, sizes)
        if not points:
            continue
        xs = [n for n, _ in points]
        label = server.capitalize()
        latency.plot(xs, [v["delivery_latency"]["p50_ms"] for _, v in points],
                     color=colour, marker="o", label=f"{label} delivery p50")
        latency.plot(xs, [v["delivery_latency"]["p99_ms"] for _, v in points],
                     color=colour, marker="o", linestyle="--", label=f"{label} delivery p99")
        latency.plot(xs, [v["send_latency"]["p50_ms"] for _, v in points],
                     color=colour, marker="x", linestyle=":", label=f"{label} send p50")
        # Myelin runs each size on a fresh server: its peak is the run's. Synapse keeps one
        # instance: its RSS after each run.
        field, what = ("peak_rss_mib", "peak RSS") if server == "myelin" else ("rss_mib", "RSS after the run")
        rss = [(n, v.get("server_memory", {}).get("after", {}).get(field)) for n, v in points]
        rss = [(n, m) for n, m in rss if m is not None]
        if rss:
            memory.plot([n for n, _ in rss], [m for _, m in rss], color=colour, marker="o",
                        label=f"{label} {what}")
    latency.set_xscale("log")
    latency.set_yscale("log")
    latency.set_xlabel("members long-polling in one room (1 message/s)")
    latency.set_ylabel("ms")
    latency.set_title("Delivery and send latency")
    latency.grid(True, which="both", alpha=0.3)
    latency.legend(fontsize="small")
    memory.set_xscale("log")
    memory.set_xlabel("members long-polling in one room (1 message/s)")
    memory.set_ylabel("MiB")
    memory.set_title("Server memory")
    memory.grid(True, which="both", alpha=0.3)
    memory.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(out, format="svg", metadata={"Date": None})


if __name__ == "__main__":
    main()
