"""From raw figures to ratios, goals, tables, JSON and a chart.

Every goal of issue 7 is a ratio of two figures measured in the same run, so drift of the
machine between runs does not move it much (drift within the run still does: the systems take
turns round by round for that reason).
"""

from __future__ import annotations

import json
import shutil
from datetime import datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

KINDS = ("flat", "ivf", "hnsw")
TRANSPORTS = ("tcp", "ipc")
COLUMNS = {
    "local": "local faiss",
    "tcp": "FAISSx tcp",
    "ipc": "FAISSx ipc",
    "echo-tcp": "echo tcp",
    "echo-ipc": "echo ipc",
    "original": "original faissx",
}

#: goal -> (description, comparison, target)
GOALS = {
    "a": ("nq=1: (remote p50 - local p50) / echo p50", "<=", 1.3),
    "b": ("nq=1000: remote p50 / local p50", "<=", 1.05),
    "c": ("one-call add (100k x 128): remote bandwidth / echo bandwidth", ">=", 0.70),
    "d": ("QPS of 4 clients / QPS of 1 client (nq=1..16)", ">=", 1.7),
}


# -- derived figures ------------------------------------------------------------------------------


def _fig(results: dict[str, Any], kind: str, workload: str, system: str, *keys: str) -> Any:
    """A figure, or None where it is missing, failed or skipped."""
    node: Any = results["workloads"].get(kind, {}).get(workload, {}).get("systems", {})
    node = node.get(system)
    for key in keys:
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _top_clients(results: dict[str, Any]) -> tuple[str, str]:
    clients = results["sizes"]["clients"]
    return str(clients[0]), str(clients[-1])


def derive(results: dict[str, Any]) -> dict[str, Any]:
    """Ratios per index kind and transport, the goals, and the comparison with the original."""
    first, top = _top_clients(results)
    ratios: dict[str, Any] = {}
    for kind in KINDS:
        ratios[kind] = {}
        local_p50 = _fig(results, kind, "latency", "local", "p50_us")
        local_batch = _fig(results, kind, "batch_search", "local", "p50_ms")
        for t in (*TRANSPORTS, "local", "echo-tcp"):
            r: dict[str, Any] = {}
            qps = results["workloads"][kind]["qps"]["systems"].get(t, {})
            q1 = qps.get(first, {}).get("qps") if isinstance(qps, dict) else None
            for n in results["sizes"]["clients"][1:]:
                qn = qps.get(str(n), {}).get("qps") if isinstance(qps, dict) else None
                r[f"qps_{n}_over_{first}"] = _ratio(qn, q1)
            if t in TRANSPORTS:
                p50 = _fig(results, kind, "latency", t, "p50_us")
                echo = _fig(results, kind, "latency", f"echo-{t}", "p50_us")
                batch = _fig(results, kind, "batch_search", t, "p50_ms")
                echo_batch = _fig(results, kind, "batch_search", f"echo-{t}", "p50_ms")
                r["latency_overhead_over_echo"] = (
                    (p50 - local_p50) / echo if None not in (p50, local_p50) and echo else None
                )
                r["latency_remote_over_local"] = _ratio(p50, local_p50)
                r["batch_remote_over_local"] = _ratio(batch, local_batch)
                r["batch_overhead_over_echo"] = (
                    (batch - local_batch) / echo_batch
                    if None not in (batch, local_batch) and echo_batch
                    else None
                )
                if kind == "flat":
                    r["add_bandwidth_over_echo"] = _ratio(
                        _fig(results, kind, "add", t, "mb_s"),
                        _fig(results, kind, "add", f"echo-{t}", "mb_s"),
                    )
                    r["add_remote_over_local"] = _ratio(
                        _fig(results, kind, "add", t, "p50_ms"),
                        _fig(results, kind, "add", "local", "p50_ms"),
                    )
                    r["batch_add_bandwidth_over_echo"] = _ratio(
                        _fig(results, kind, "add_batches", t, "mb_s"),
                        _fig(results, kind, "add_batches", f"echo-{t}", "mb_s"),
                    )
            ratios[kind][t] = r

    goals = []
    for kind in KINDS:
        for t in TRANSPORTS:
            r = ratios[kind][t]
            values = {
                "a": r["latency_overhead_over_echo"],
                "b": r["batch_remote_over_local"],
                "c": r.get("add_bandwidth_over_echo"),
                "d": r.get("qps_4_over_1") if top == "4" else None,
            }
            for goal, (text, op, target) in GOALS.items():
                if goal == "c" and kind != "flat":
                    continue
                value = values[goal]
                met = (
                    None if value is None else (value <= target if op == "<=" else value >= target)
                )
                goals.append(
                    {
                        "goal": goal,
                        "kind": kind,
                        "transport": t,
                        "what": text,
                        "target": f"{op} {target:g}",
                        "value": value,
                        "met": met,
                    }
                )

    return {
        "ratios": ratios,
        "goals": goals,
        "summary": _summary(goals),
        "vs_original": versus_original(results),
    }


def _summary(goals: list[dict[str, Any]]) -> dict[str, Any]:
    out = {}
    for goal, (text, op, target) in GOALS.items():
        cells = [g for g in goals if g["goal"] == goal and g["met"] is not None]
        met = [g for g in cells if g["met"]]
        out[goal] = {
            "what": text,
            "target": f"{op} {target:g}",
            "met": len(met),
            "measured": len(cells),
            "verdict": "n/a" if not cells else "met" if len(met) == len(cells) else "not met",
            "flat_tcp": next(
                (
                    g["value"]
                    for g in goals
                    if g["goal"] == goal and g["kind"] == "flat" and g["transport"] == "tcp"
                ),
                None,
            ),
        }
    return out


def versus_original(results: dict[str, Any]) -> dict[str, Any]:
    """How many times faster FAISSx over tcp is than the original, workload by workload."""
    first, top = _top_clients(results)
    out: dict[str, Any] = {}

    def status(kind: str, workload: str) -> str | None:
        node = results["workloads"][kind][workload]["systems"].get("original", {})
        if "failed" in node:
            return f"failed: {node['failed']}"
        if "skipped" in node:
            return f"skipped: {node['skipped']}"
        return None

    s = results["sizes"]
    rows = []
    for kind in KINDS:
        rows += [
            (kind, "latency", "p50_us", "nq=1 search p50", "time"),
            (kind, "batch_search", "p50_ms", f"nq={s['nq_batch']} search p50", "time"),
        ]
        if kind == "flat":
            rows += [
                (kind, "add", "p50_ms", f"one {s['n_large']}-vector add", "time"),
                (kind, "add_batches", "p50_us", f"{s['batch_add']}-vector add p50", "time"),
            ]
        rows += [
            (kind, "build", "add_s", "build (add)", "time"),
            (kind, "qps", first, f"QPS, {first} client", "rate"),
            (kind, "qps", top, f"QPS, {top} clients", "rate"),
        ]
    for kind, workload, field, label, sense in rows:
        name = f"{kind}: {label}"
        problem = status(kind, workload)
        if workload == "qps":
            ours = _fig(results, kind, workload, "tcp", field, "qps")
            theirs = _fig(results, kind, workload, "original", field, "qps")
        else:
            ours = _fig(results, kind, workload, "tcp", field)
            theirs = _fig(results, kind, workload, "original", field)
        if problem is not None or ours is None or theirs is None:
            out[name] = {"speedup": None, "note": problem or "not measured"}
            continue
        speedup = theirs / ours if sense == "time" else ours / theirs
        out[name] = {"speedup": speedup, "ours": ours, "original": theirs, "unit": field}
    return out


# -- formatting -----------------------------------------------------------------------------------


def fmt_seconds(s: float | None) -> str:
    if s is None:
        return "-"
    if s < 1e-3:
        return f"{s * 1e6:.0f} µs"
    if s < 1:
        return f"{s * 1e3:.3g} ms" if s < 0.1 else f"{s * 1e3:.0f} ms"
    return f"{s:.3g} s"


def fmt_num(x: float | None, digits: int = 3) -> str:
    if x is None:
        return "-"
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    return f"{x:.{digits}g}"


def _cell(
    results: dict[str, Any], kind: str, workload: str, system: str, notes: list[str], render: Any
) -> str:
    node = results["workloads"].get(kind, {}).get(workload, {}).get("systems", {}).get(system)
    if node is None:
        return ""
    if "failed" in node:
        note = f"{COLUMNS[system]}, {kind} {workload}: {node['failed']}"
        if note not in notes:
            notes.append(note)
        return f"[red]failed[{notes.index(note) + 1}][/]"
    if "skipped" in node:
        return "[dim]skipped[/]"
    try:
        return render(node)
    except (KeyError, TypeError):
        return "-"


def figures_table(results: dict[str, Any], notes: list[str]) -> Table:
    s = results["sizes"]
    systems = list(COLUMNS)
    table = Table(
        title="Absolute figures (p50 unless noted; each system measured in turn, same run)",
        title_justify="left",
    )
    table.add_column("workload")
    for system in systems:
        table.add_column(COLUMNS[system], justify="right")
    clients = "/".join(str(c) for c in s["clients"])

    def lat(node: dict[str, Any]) -> str:
        return f"{fmt_seconds(node['p50_us'] / 1e6)} · p99 {fmt_seconds(node['p99_us'] / 1e6)}"

    def qps(node: dict[str, Any]) -> str:
        return " / ".join(fmt_num(node[str(c)]["qps"]) for c in s["clients"])

    for i, kind in enumerate(KINDS):
        if i:
            table.add_section()
        w = results["workloads"][kind]
        rows = [
            (f"[b]{kind}[/] nq=1 latency\n[dim]{w['latency']['desc']}[/]", "latency", lat),
            (
                f"{kind} nq={s['nq_batch']} search\n[dim]{w['batch_search']['desc']}[/]",
                "batch_search",
                lambda n: fmt_seconds(n["p50_ms"] / 1e3),
            ),
            (
                f"{kind} build: train + add",
                "build",
                lambda n: (
                    f"{fmt_seconds(n['train_s'])} + {fmt_seconds(n['add_s'])}"
                    if n["train_s"]
                    else fmt_seconds(n["add_s"])
                ),
            ),
        ]
        if kind == "flat":
            rows += [
                (
                    f"flat add\n[dim]{w['add']['desc']}[/]",
                    "add",
                    lambda n: f"{fmt_seconds(n['p50_ms'] / 1e3)} · {fmt_num(n['mb_s'])} MB/s",
                ),
                (
                    f"flat add, batched\n[dim]{w['add_batches']['desc']}[/]",
                    "add_batches",
                    lambda n: f"{fmt_seconds(n['p50_us'] / 1e6)} · {fmt_num(n['mb_s'])} MB/s",
                ),
            ]
        rows.append((f"{kind} QPS, {clients} clients\n[dim]nq=1..{s['nq_max']}[/]", "qps", qps))
        for label, workload, render in rows:
            table.add_row(
                label,
                *(_cell(results, kind, workload, system, notes, render) for system in systems),
            )
    return table


def _verdict(value: float | None, op: str, target: float) -> str:
    if value is None:
        return "[dim]n/a[/]"
    ok = value <= target if op == "<=" else value >= target
    return f"[green]{value:.2f} ✓[/]" if ok else f"[red]{value:.2f} ✗[/]"


def goals_table(results: dict[str, Any], derived: dict[str, Any]) -> Table:
    ratios = derived["ratios"]
    first, top = _top_clients(results)
    table = Table(title="Ratios and goals (same run)", title_justify="left")
    table.add_column("ratio")
    table.add_column("goal", justify="center")
    cells = [(kind, t) for kind in KINDS for t in TRANSPORTS]
    for kind, t in cells:
        table.add_column(f"{kind} {t}", justify="right")
    table.add_column("verdict")

    def row(label: str, key: str, goal: str | None = None, only: str | None = None) -> None:
        values = []
        for kind, t in cells:
            v = ratios[kind][t].get(key) if only in (None, kind) else None
            if goal is None:
                values.append("-" if v is None else f"{v:.2f}")
            else:
                _, op, target = GOALS[goal]
                values.append(_verdict(v, op, target) if only in (None, kind) else "")
        if goal is None:
            table.add_row(f"[dim]{label}[/]", "", *values, "")
            return
        _, op, target = GOALS[goal]
        summary = derived["summary"][goal]
        verdict = {"met": "[green]met[/]", "not met": "[red]not met[/]", "n/a": "[dim]n/a[/]"}[
            summary["verdict"]
        ]
        if summary["verdict"] == "not met":
            verdict += f" ({summary['met']}/{summary['measured']})"
        table.add_row(f"({goal}) {label}", f"{op} {target:g}", *values, verdict)

    row("nq=1: (remote - local) / echo", "latency_overhead_over_echo", "a")
    row("nq=1: remote / local", "latency_remote_over_local")
    row(f"nq={results['sizes']['nq_batch']}: remote / local", "batch_remote_over_local", "b")
    row(f"nq={results['sizes']['nq_batch']}: (remote - local) / echo", "batch_overhead_over_echo")
    row("one-call add: bandwidth / echo bandwidth", "add_bandwidth_over_echo", "c", only="flat")
    row("one-call add: remote / local time", "add_remote_over_local", only="flat")
    row(
        f"{results['sizes']['batch_add']}-vector adds: bandwidth / echo",
        "batch_add_bandwidth_over_echo",
        only="flat",
    )
    if top == "4":
        row(f"QPS {top} clients / {first} client", f"qps_{top}_over_{first}", "d")
    else:
        row(f"QPS {top} clients / {first} client (goal needs 4)", f"qps_{top}_over_{first}")
    for n in results["sizes"]["clients"][1:-1]:
        row(f"QPS {n} clients / {first} client", f"qps_{n}_over_{first}")

    def scaling(system: str) -> str:
        return (
            " · ".join(
                f"{kind} {v:.2f}"
                for kind in KINDS
                if (v := ratios[kind][system].get(f"qps_{top}_over_{first}")) is not None
            )
            or "n/a"
        )

    table.caption = (
        f"QPS {top}/{first} for reference: local faiss processes "
        f"{scaling('local')}; bare echo {scaling('echo-tcp')}.\n"
        "(remote - local) / echo: how many bare round trips FAISSx adds."
    )
    return table


def original_table(derived: dict[str, Any]) -> Table:
    table = Table(title="Versus the original faissx (FAISSx over tcp)", title_justify="left")
    for column, justify in (
        ("workload", "left"),
        ("FAISSx", "right"),
        ("original", "right"),
        ("FAISSx is", "right"),
    ):
        table.add_column(column, justify=justify)
    for name, row in derived["vs_original"].items():
        if row["speedup"] is None:
            note = row["note"] if len(row["note"]) <= 48 else row["note"][:47] + "…"
            table.add_row(name, "", "", f"[dim]{escape(note)}[/]")
            continue
        unit = row["unit"]
        if unit.isdigit():
            ours, theirs = fmt_num(row["ours"]) + " /s", fmt_num(row["original"]) + " /s"
        else:
            scale = {"p50_us": 1e-6, "p50_ms": 1e-3, "add_s": 1.0}[unit]
            ours, theirs = fmt_seconds(row["ours"] * scale), fmt_seconds(row["original"] * scale)
        speed = row["speedup"]
        text = f"{speed:,.0f}x faster" if speed >= 10 else f"{speed:.2f}x faster"
        if speed < 1:
            text = f"[red]{1 / speed:.2f}x slower[/]"
        table.add_row(name, ours, theirs, text)
    return table


def machine_line(results: dict[str, Any]) -> str:
    m, meta = results["machine"], results["meta"]
    return (
        f"{m.get('cpu_model') or m['machine']}, {m['usable_cpus']} usable of "
        f"{m['cpu_count']} CPUs · {m['platform']} · Python {m['python']} · faiss "
        f"{m.get('faiss')} · pyzmq {m.get('pyzmq')} (libzmq {m.get('libzmq')}) · "
        f"load avg {m['load_avg_before'][0]} → {m['load_avg_after'][0]} · "
        f"{meta['started']} · {meta['duration_s']} s"
    )


def print_report(results: dict[str, Any], console: Console) -> None:
    derived = {k: results[k] for k in ("ratios", "goals", "summary", "vs_original")}
    notes: list[str] = []
    console.print()
    console.print(f"[b]FAISSx benchmark[/] — {machine_line(results)}")
    console.print(figures_table(results, notes))
    for i, note in enumerate(notes, 1):
        console.print(f"[red]\\[{i}][/] {escape(note)}", highlight=False)
    console.print(goals_table(results, derived))
    for goal, summary in derived["summary"].items():
        flat = summary["flat_tcp"]
        colour = {"met": "green", "not met": "red", "n/a": "dim"}[summary["verdict"]]
        console.print(
            f"goal ({goal}) {summary['what']} {summary['target']}: "
            f"[{colour}]{summary['verdict']}[/] — flat/tcp "
            f"{'n/a' if flat is None else f'{flat:.2f}'}; "
            f"{summary['met']} of {summary['measured']} measured cells met"
        )
    if results["meta"]["original"]:
        console.print(original_table(derived))


# -- files ----------------------------------------------------------------------------------------


def write_json(results: dict[str, Any], out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    latest = out / "latest.json"
    latest.write_text(json.dumps(results, indent=2, sort_keys=False) + "\n")
    day = datetime.fromisoformat(results["meta"]["started"]).strftime("%Y-%m-%d")
    dated = out / f"{day}.json"
    shutil.copyfile(latest, dated)
    return [latest, dated]


def draw_chart(results: dict[str, Any], path: Path) -> str | None:
    """Draw the PNG; return why not when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed, no chart drawn (pip install -e '.[bench]' to get it)"
    systems = list(COLUMNS)
    colours = {
        "local": "#4c72b0",
        "tcp": "#dd8452",
        "ipc": "#55a868",
        "echo-tcp": "#8c8c8c",
        "echo-ipc": "#c7c7c7",
        "original": "#c44e52",
    }
    fig, axes = plt.subplots(2, 2, figsize=(14, 9.5))

    def bars(
        ax: Any,
        groups: list[tuple[str, str, str]],
        field: str,
        scale: float,
        ylabel: str,
        title: str,
    ) -> None:
        width = 0.8 / len(systems)
        for j, system in enumerate(systems):
            xs, ys = [], []
            for i, (kind, workload, _) in enumerate(groups):
                v = _fig(results, kind, workload, system, field)
                if v is not None:
                    xs.append(i + (j - (len(systems) - 1) / 2) * width)
                    ys.append(v * scale)
            ax.bar(xs, ys, width, label=COLUMNS[system], color=colours[system])
        ax.set_xticks(range(len(groups)), [label for _, _, label in groups])
        ax.set_yscale("log")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(axis="y", alpha=0.3, which="both")

    bars(
        axes[0][0],
        [(k, "latency", k) for k in KINDS],
        "p50_us",
        1.0,
        "µs (log)",
        "nq=1 k=10 search, p50",
    )
    bars(
        axes[0][1],
        [(k, "batch_search", k) for k in KINDS],
        "p50_ms",
        1.0,
        "ms (log)",
        f"nq={results['sizes']['nq_batch']} k=10 search, p50",
    )
    s = results["sizes"]
    bars(
        axes[1][0],
        [
            ("flat", "add", f"one {s['n_large']}-vector add"),
            ("flat", "add_batches", f"{s['batch_add']}-vector adds"),
        ],
        "mb_s",
        1.0,
        "MB/s (log)",
        "add bandwidth (higher is better)",
    )
    axes[0][0].legend(fontsize=8)

    ax = axes[1][1]
    clients = results["sizes"]["clients"]
    styles = {"local": ":", "tcp": "-", "ipc": "--", "original": "-."}
    kind_colours = {"flat": "#4c72b0", "ivf": "#dd8452", "hnsw": "#55a868"}
    for kind in KINDS:
        for system, style in styles.items():
            ys = [_fig(results, kind, "qps", system, str(c), "qps") for c in clients]
            if all(y is not None for y in ys):
                ax.plot(
                    clients,
                    ys,
                    style,
                    marker="o",
                    color=kind_colours[kind],
                    label=f"{kind} {COLUMNS[system]}",
                )
    ys = [_fig(results, "flat", "qps", "echo-tcp", str(c), "qps") for c in clients]
    if all(y is not None for y in ys):
        ax.plot(clients, ys, "-", marker="s", color=colours["echo-tcp"], label="bare echo tcp")
    ax.set_xticks(clients)
    ax.set_yscale("log")
    ax.set_xlabel("client processes")
    ax.set_ylabel("searches/s (log)")
    ax.set_title(f"aggregate QPS, nq=1..{results['sizes']['nq_max']}")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, ncol=2, loc="best")
    line = machine_line(results)
    cut = line.find(" · ", len(line) // 2)
    fig.suptitle(f"FAISSx benchmark — {line[:cut]}\n{line[cut + 3 :]}", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None
