"""From one run's raw figures to ratios, a markdown table, and a chart.

Every peer is compared with the FAISSx configuration of the same durability (``System.match``:
``--fsync always`` for peers that fsync each write, ``--fsync off`` for those that leave writes
to the OS, in-memory for in-memory ones); the ratio is FAISSx / peer, so below 1 is FAISSx
ahead on a lower-is-better row and above 1 is FAISSx ahead on a higher-is-better row.

Where the matched configuration was left out of a run (the large HNSW runs build only
``--fsync always``), a write row falls back only to a FAISSx configuration at least as durable
(so FAISSx is never flattered), and a search row to any (searches never touch the log); such
cells carry a †.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmarks.peers.systems import OURS

MIB = 1 << 20

#: row -> (label, path into a case's figures, scale, better: "lower" | "higher" | None, format)
ROWS: dict[str, tuple[str, tuple[str | int, ...], float, str | None, str]] = {
    "load_s": ("bulk load until searchable (s)", ("load", "seconds"), 1, "lower", "{:.2f}"),
    "p50_ms": ("one query, p50 (ms)", ("latency", "p50_ms"), 1, "lower", "{:.3f}"),
    "p99_ms": ("one query, p99 (ms)", ("latency", "p99_ms"), 1, "lower", "{:.3f}"),
    "batch_qps": ("one batch of the queries (queries/s)", ("batch", "qps"), 1, "higher", "{:,.0f}"),
    "qps4": (
        "4 concurrent clients, one query each (queries/s)",
        ("qps_concurrent", "qps"),
        1,
        "higher",
        "{:,.0f}",
    ),
    "memory_mib": (
        "resident memory (MiB; server tree PSS, or embedded RSS growth)",
        ("memory", "bytes"),
        1 / MIB,
        "lower",
        "{:,.0f}",
    ),
    "memory_growth_mib": (
        "memory growth over the idle system (MiB)",
        ("memory", "growth"),
        1 / MIB,
        "lower",
        "{:,.0f}",
    ),
    "disk_mib": ("on disk (MiB)", ("disk_bytes",), 1 / MIB, "lower", "{:,.1f}"),
    "recall": ("recall@10 (measured)", ("recall",), 1, None, "{:.4f}"),
    "ef": ("ef_search reached", ("search_params", "ef"), 1, None, "{:.0f}"),
    "add_row_ms": ("one-row insert, p50 (ms)", ("add_row", "p50_ms"), 1, "lower", "{:.3f}"),
    "delete_ms": ("delete 100 ids (ms)", ("delete", "seconds"), 1e3, "lower", "{:.1f}"),
    "loadavg": (
        "machine load average (1 min) as the case ended",
        ("loadavg_1min", 1),
        1,
        None,
        "{:.1f}",
    ),
}


#: Rows whose figure depends on the durability level (what is written and synced).
WRITE_ROWS = frozenset({"load_s", "add_row_ms", "delete_ms", "disk_mib"})
#: Rows in queries per second (below 10, shown with two decimals).
QPS_ROWS = frozenset({"batch_qps", "qps4"})
#: FAISSx configurations from least to most durable.
DURABILITY = {"faissx": 0, "faissx-off": 1, "faissx-always": 2}


def figure(case: dict[str, Any], row: str) -> float | None:
    _, path, scale, _, _ = ROWS[row]
    if path[0] == "memory" and "memory" not in case:
        # a case cut off after its load: the memory it held then (growth is not measured)
        path = ("memory_after_load", *path[1:])
    node: Any = case
    for key in path:
        if isinstance(node, list) and isinstance(key, int) and key < len(node):
            node = node[key]
            continue
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return None if node is None else float(node) * scale


def _cases(results: dict[str, Any]) -> Any:
    for shape_key, shape in results["shapes"].items():
        for kind, systems in shape["kinds"].items():
            yield shape_key, kind, systems


def _ours(
    systems: dict[str, Any], meta: dict[str, Any], match: str, row: str
) -> tuple[float | None, str]:
    """FAISSx's figure for ``row`` from ``match``, else from a stand-in (see the module doc)."""
    rank = DURABILITY[match]
    others = sorted(
        (k for k in DURABILITY if k != match),
        key=lambda k: (DURABILITY[k] < rank, abs(DURABILITY[k] - rank)),
    )
    order = [match, *others]
    for key in order:
        if row in WRITE_ROWS and DURABILITY[key] < DURABILITY[match]:
            continue
        if key != match and not meta.get(key, {}).get("searches", True) and row not in WRITE_ROWS:
            continue
        value = figure(systems.get(key, {}), row)
        if value is not None:
            return value, key
    return None, match


def _load_bound(case: dict[str, Any]) -> float | None:
    """A load cut off by its budget took longer than the budget: that bound, else None."""
    dnf = case.get("dnf")
    if dnf and dnf["phase"].startswith("load") and "load" not in case:
        return float(dnf["budget_s"])
    return None


def _load_cell(
    systems: dict[str, Any], meta: dict[str, Any], match: str, case: dict[str, Any]
) -> tuple[float, str, str] | None:
    """The load row where one side did not finish its load: (ratio bound, "<" or ">",
    FAISSx configuration), or None when neither side was cut off (or both were)."""
    a, source = _ours(systems, meta, match, "load_s")
    b = figure(case, "load_s")
    if a is not None and b is None and (bound := _load_bound(case)) is not None:
        return a / bound, "<", source
    if a is None and b:
        for key in sorted(DURABILITY, key=lambda k: -DURABILITY[k]):
            if DURABILITY[key] >= DURABILITY[match] and key in systems:
                bound = _load_bound(systems[key])
                if bound is not None:
                    return bound / b, ">", key
    return None


def derive(results: dict[str, Any]) -> dict[str, Any]:
    """Ratios FAISSx / peer per row (against the matched FAISSx configuration), and losses.
    Where one side's load did not finish in its budget, the load row holds a bound (``<`` or
    ``>``: the budget in place of the figure): a load FAISSx did not finish and the peer did
    is a loss."""
    meta = results["meta"]["systems"]
    ratios: dict[str, Any] = {}
    losses = []
    for shape_key, kind, systems in _cases(results):
        per_kind = ratios.setdefault(shape_key, {}).setdefault(kind, {})
        for peer, case in systems.items():
            match = meta.get(peer, {}).get("match")
            if peer in OURS or not match or match not in DURABILITY:
                continue
            if "load" not in case and "latency" not in case and "load_progress" not in case:
                continue
            cells = {}
            for row, (_, _, _, better, _) in ROWS.items():
                if better is None:
                    continue
                bound = _load_cell(systems, meta, match, case) if row == "load_s" else None
                b = figure(case, row)
                a, source = _ours(systems, meta, match, row)
                if bound is not None:
                    ratio, sign, source = bound
                    a = b = None
                    won = sign == "<"
                elif a is None or b is None or b == 0:
                    continue
                else:
                    ratio, sign = a / b, ""
                    won = ratio <= 1 if better == "lower" else ratio >= 1
                cells[row] = {"ratio": ratio, "faissx_ahead": won, "faissx": source, "bound": sign}
                if not won:
                    losses.append(
                        {
                            "shape": shape_key,
                            "kind": kind,
                            "peer": peer,
                            "row": row,
                            "faissx": source,
                            "ratio": ratio,
                            "bound": sign,
                            "faissx_value": a,
                            "peer_value": b,
                        }
                    )
            if cells:
                per_kind[peer] = {"against": match, "rows": cells}
    return {"ratios": ratios, "losses": losses}


def dnf_note(case: dict[str, Any]) -> str:
    """ "did not finish <phase> in N s", with what the case had completed."""
    dnf = case["dnf"]
    text = f"did not finish {dnf['phase']} in {dnf['budget_s']:g} s"
    done = [p for p in dnf.get("completed", [])]
    progress = case.get("load_progress")
    if progress and "load" not in case:
        rate = progress.get("rows_per_s")
        text += f"; inserted {progress['rows']:,} of {progress['of']:,} rows"
        if rate:
            text += f" in {progress['insert_s']:.0f} s ({rate:,.0f} rows/s)"
        if progress.get("index") == "started":
            text += ", then the index build/flush did not end"
    if done:
        text += f"; completed: {', '.join(done)}"
    return text


def _cell(case: dict[str, Any], row: str, nq: int) -> str:
    if "not_offered" in case:
        return "n/a"
    if "not_installed" in case:
        return "not installed"
    if "skipped" in case:
        return "skipped"
    value = figure(case, row)
    if value is None:
        if "dnf" in case:
            dnf, done = case["dnf"], case.get("load_progress", {})
            if row == "load_s" and "load" not in case and done:
                return f"DNF: {done['rows']:,} rows in {dnf['budget_s']:g} s"
            return f"DNF ({dnf['phase']} > {dnf['budget_s']:g} s)"
        return "—" if "error" not in case else "failed"
    text = ROWS[row][4].format(value) if value >= 10 or row not in QPS_ROWS else f"{value:.2f}"
    if row in ("batch_qps", "recall") and case.get("batch", {}).get("nq", nq) < nq:
        text += f" ({case['batch']['nq']} q)"
    if row in ("p50_ms", "p99_ms") and case.get("latency", {}).get("n", 200) < 200:
        text += f" (n={case['latency']['n']})"
    return text


def markdown(results: dict[str, Any]) -> str:
    meta = results["meta"]
    derived = results.get("derived") or derive(results)
    labels = {k: v["label"] for k, v in meta["systems"].items()}
    out = [
        "# FAISSx against the vector databases a user would pick instead",
        "",
        f"One run, {meta['started']} to {meta.get('finished', '?')} (UTC), "
        f"`python -m benchmarks.peers` (`make bench-peers`).",
        f"Machine: {meta['machine']['cpus']} cores shared with other work, "
        f"{meta['machine']['platform']}.",
        f"`uptime` before: `{meta['uptime_before']}`; after: `{meta.get('uptime_after', '?')}`.",
        *(
            f"Part {i}: {part['started']} to {part['finished']}, {', '.join(part['shapes'])}, "
            f"budgets load {part['plan'].get('load_budget_s')} s / search "
            f"{part['plan'].get('search_budget_s')} s / write "
            f"{part['plan'].get('write_budget_s')} s."
            for i, part in enumerate(meta.get("parts", []), 1)
        ),
        *(
            [
                f"Load average (1 min) sampled every 15 s during the run: min "
                f"{meta['loadavg_during']['min']}, median {meta['loadavg_during']['median']}, "
                f"max {meta['loadavg_during']['max']} ({meta['loadavg_during']['samples']} "
                "samples; per case in the row below each table)."
            ]
            if meta.get("loadavg_during")
            else []
        ),
        "",
        "Data: faiss's `SyntheticDataset` (L2), 1000 queries, k=10. HNSW everywhere with "
        f"M={meta['plan']['M']}, ef_construction={meta['plan']['ef_construction']}; ef_search "
        f"raised along {list(meta['plan']['ef_ladder'])} until recall@10 >= "
        f"{meta['plan']['target_recall']} on the 1000 queries. Loads insert "
        f"{meta['plan']['insert_batch']} rows a call and end when the data is searchable "
        "(index built, collection loaded).",
        "",
        "Where one query takes long (exact search over many rows), the batch holds fewer "
        "queries (sized to ~"
        f"{meta['plan']['batch_budget_s']:g} s from a {meta['plan']['probe_nq']}-query probe) "
        "and the one-query searches are fewer (~"
        f"{meta['plan'].get('latency_budget_s', 15):g} s, at least 30): such cells say "
        "`(N q)` or `(n=N)`, and their recall is over those N queries.",
        "",
        f"Budgets per case: load {meta['plan'].get('load_budget_s', '—')} s, search "
        f"{meta['plan'].get('search_budget_s', '—')} s, write "
        f"{meta['plan'].get('write_budget_s', '—')} s, whole case "
        f"{meta['plan']['budget_s']:g} s; a case past one is reported as DNF (did not finish) "
        "with what it completed.",
        "",
        "## Systems",
        "",
        "| system | versions | durability (fsync level) | compared with | concurrent clients |",
        "|---|---|---|---|---|",
    ]
    versions: dict[str, str] = {}
    for _, _, systems in _cases(results):
        for key, case in systems.items():
            if "versions" in case:
                versions[key] = ", ".join(f"{k} {v}" for k, v in case["versions"].items())
    for key, info in meta["systems"].items():
        out.append(
            f"| {info['label']} | {versions.get(key, '')} | {info['durability']} | "
            f"{labels.get(info['match'], '—') if info['match'] else '—'} | "
            f"{info['concurrency']} |"
        )
    for shape_key, kind, systems in _cases(results):
        keys = list(systems)
        nq = results["shapes"][shape_key]["shape"]["nq"]
        out += [
            "",
            f"## {shape_key}, {'exact (Flat)' if kind == 'flat' else 'HNSW'}",
            "",
            "| row | " + " | ".join(labels[k] for k in keys) + " |",
            "|---|" + "---|" * len(keys),
        ]
        for row, (label, *_rest) in ROWS.items():
            if kind == "flat" and row == "ef":
                continue
            out.append(
                f"| {label} | " + " | ".join(_cell(systems[k], row, nq) for k in keys) + " |"
            )
        out.append(
            "| load average during the case (1 min: min-max) | "
            + " | ".join(
                f"{c['loadavg_during']['min']:.1f}-{c['loadavg_during']['max']:.1f}"
                if "loadavg_during" in c
                else ""
                for c in systems.values()
            )
            + " |"
        )
        peers = derived["ratios"].get(shape_key, {}).get(kind, {})
        if peers:
            out += [
                "",
                "FAISSx / peer (the FAISSx configuration of the peer's durability; "
                "**bold**: FAISSx behind; † against a stand-in FAISSx configuration where that "
                "one was not run or measures writes only: a search row against any (searches "
                "never touch the log), a write row only against one at least as durable):",
                "",
                "| row | "
                + " | ".join(f"{labels[p]} vs {labels[v['against']]}" for p, v in peers.items())
                + " |",
                "|---|" + "---|" * len(peers),
            ]
            for row, (label, _, _, better, _) in ROWS.items():
                if better is None:
                    continue
                cells = []
                for peer in peers.values():
                    c = peer["rows"].get(row)
                    if c is None:
                        cells.append("—")
                    else:
                        text = (
                            c.get("bound", "")
                            + f"{c['ratio']:.2f}"
                            + ("†" if c["faissx"] != peer["against"] else "")
                        )
                        cells.append(text if c["faissx_ahead"] else f"**{text}**")
                out.append(f"| {label} ({better} is better) | " + " | ".join(cells) + " |")
        notes = [
            f"- {labels[k]}: "
            + (
                dnf_note(c)
                if "dnf" in c
                else f"{c.get('not_offered') or c.get('not_installed') or c.get('skipped') or ''}"
                f"{c.get('error', '')}"
            )
            for k, c in systems.items()
            if {"not_offered", "not_installed", "error", "skipped", "dnf"} & set(c)
        ]
        notes += [
            f"- {labels[k]}: delete: {c['delete']['error']}"
            for k, c in systems.items()
            if "error" in c.get("delete", {})
        ]
        notes += [
            f"- {labels[k]}: the case of the part started {c['rerun']} (it replaced this "
            "shape's first run of the case)"
            for k, c in systems.items()
            if "rerun" in c
        ]
        if notes:
            out += ["", *notes]
    losses = derived["losses"]
    out += ["", "## Rows FAISSx loses", ""]
    if not losses:
        out.append("None.")
    for loss in losses:
        if loss.get("bound"):
            case = results["shapes"][loss["shape"]]["kinds"][loss["kind"]][loss["peer"]]
            ours = f"did not finish in {loss['ratio'] * figure(case, loss['row']):.0f} s"
            theirs = f"{figure(case, loss['row']):.4g}"
        else:
            ours, theirs = f"{loss['faissx_value']:.4g}", f"{loss['peer_value']:.4g}"
        out.append(
            f"- {loss['shape']} {loss['kind']}, {ROWS[loss['row']][0]}: "
            f"{labels[loss['faissx']]} {ours} vs {labels[loss['peer']]} {theirs} "
            f"(ratio {loss.get('bound', '')}{loss['ratio']:.2f})"
        )
    anchors = results.get("anchors")
    if anchors:
        out += ["", "## Our own anchors (the gaps issue 17 names)", ""]
        if "error" in anchors:
            out.append(f"failed: {anchors['error']}")
        else:
            out += [
                "| one-query search | local p50 (µs) | FAISSx tcp p50 (µs) | echo tcp p50 "
                "(µs) | (FAISSx - local) / echo (goal <= 1.3) |",
                "|---|---|---|---|---|",
            ]
            for kind, got in anchors["latency"].items():
                out.append(
                    f"| {kind} | {got['local']['p50_us']:.0f} | "
                    f"{got['tcp']['p50_us']:.0f} | {got['echo-tcp']['p50_us']:.0f} | "
                    f"{got['overhead_over_echo']:.2f} |"
                )
            add = anchors["one_row_add"]
            out += [
                "",
                f"One-row adds (in-memory server, {add['n']['tcp']} adds): FAISSx "
                f"{add['p50_us']['tcp']:.0f} µs p50, echo round trip "
                f"{add['p50_us']['echo-tcp']:.0f} µs: FAISSx reaches "
                f"{add['bandwidth_vs_echo']:.2f} of the echo's bandwidth.",
            ]
            window = add.get("write_window")
            if window:
                key = f"tcp-window{window}"
                rate, ratio = add["adds_per_s"], add["adds_per_s_vs_echo"]
                out.append(
                    f"Until every add is acknowledged: echo {rate['echo-tcp']:,.0f} adds/s, "
                    f"FAISSx {rate['tcp']:,.0f} ({ratio['tcp']:.2f} of the echo's), with "
                    f"write_window={window} {rate[key]:,.0f} ({ratio[key]:.2f})."
                )
    return "\n".join(out) + "\n"


def chart(results: dict[str, Any], path: Path) -> str | None:
    """Bars per system for the speed rows of every (shape, kind); None when written."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import NullFormatter
    except ImportError:
        return "matplotlib is not installed: no chart (pip install -e '.[bench]')"
    cases = list(_cases(results))
    rows = ("load_s", "p50_ms", "batch_qps", "qps4", "memory_mib")
    labels = {k: v["label"] for k, v in results["meta"]["systems"].items()}
    fig, axes = plt.subplots(
        len(cases), len(rows), figsize=(4.2 * len(rows), 3.2 * len(cases)), squeeze=False
    )
    for r, (shape_key, kind, systems) in enumerate(cases):
        for c, row in enumerate(rows):
            ax = axes[r][c]
            names, values, colors = [], [], []
            for key, case in systems.items():
                value = figure(case, row)
                if (value is None or value <= 0) and "dnf" not in case:
                    continue
                name = labels[key].replace(" (", "\n(")
                if value is None or value <= 0:  # cut off by its budget: named, no bar
                    name, value = f"{labels[key]}\n(did not finish)", float("nan")
                names.append(name)
                values.append(value)
                colors.append(
                    "tab:blue" if key in OURS else "tab:gray" if key == "local" else "tab:orange"
                )
            ax.barh(names, values, color=colors)
            ax.set_ylim(-0.5, len(names) - 0.5)  # keep the rows of cases that did not finish
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(NullFormatter())
            ax.set_title(f"{shape_key} {kind}: {ROWS[row][0][:38]}", fontsize=8)
            ax.tick_params(labelsize=6)
            ax.invert_yaxis()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return None
