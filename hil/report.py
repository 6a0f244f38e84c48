"""hil.report — what one HIL run did, for machines (JUnit XML) and for people (an HTML page and Markdown).

    write_report(run, directory)  ->  directory/junit.xml
                                      directory/index.html     (open in a browser: summary, then one section per scenario)
                                      directory/summary.md     (the same summary, for a PR comment or a terminal)
                                      directory/results.json   (everything, for tools)
                                      directory/timeline-<scenario>.svg

Per scenario: the verdict (with the invariant's message when it failed), the
faults injected and when, readings produced / delivered / reported lost in
signed gap records / lost without explanation, delivery *during* each fault
(delivered per minute, and as a share of what was produced meanwhile), every
alarm's latency from the gateway's signature to the lender's store
(`hil.measure`), and a timeline plot of the agent's backlog, the readings
produced and delivered, with the faults drawn over it (each band labelled
with its delivery per minute) and each alarm as a bar from signed to stored. The SVG is written by hand (no plotting library): plain shapes a
browser or an image viewer shows as is.
"""
from __future__ import annotations

import html
import json
import math
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

from hil.bench import ScenarioResult
from hil.measure import latency_summary
from hil.processes import tail

# fault kind -> (colour, label); intervals are bands, instants are vertical lines
FAULT_STYLE: dict[str, tuple[str, str]] = {
    "partition": ("#e4572e", "no link"),
    "link-impaired": ("#f3a712", "impaired link"),
    "modem-hang": ("#8e5572", "modem hung"),
    "disk-full": ("#6a4c93", "disk full"),
    "power-cut": ("#222222", "power cut"),
    "modem-power-cycle": ("#1b998b", "modem power cycle"),
    "clock-jump": ("#2e86ab", "clock jump"),
}
MAX_POINTS = 2000
SERIES = (("head_seq", "#1f77b4", "produced (agent's last seq)"),
          ("delivered", "#2ca02c", "delivered (stored at the lender)"),
          ("spooled", "#d62728", "backlog (in the agent's spool)"))


@dataclass(slots=True)
class ScenarioOutcome:
    """One scenario test's result: pytest's verdict plus what its bench recorded (None if it never started)."""

    nodeid: str
    name: str
    outcome: str                 # passed | failed | skipped | error
    duration_s: float
    message: str = ""            # failure or skip message
    details: str = ""            # the long failure text
    result: ScenarioResult | None = None
    title: str = ""              # the scenario's one-line description (its module docstring's first line)

    @property
    def label(self) -> str:
        return self.title or self.name


@dataclass(slots=True)
class HilRun:
    """One run of the suite against one bench."""

    env_name: str
    env_path: str
    profile: str
    started: float
    ended: float | None = None
    outcomes: list[ScenarioOutcome] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        return any(o.outcome in ("failed", "error") for o in self.outcomes)


# --- the plot ---------------------------------------------------------------------------------


def _nice_step(span: float, ticks: int = 5) -> float:
    raw = max(span, 1e-9) / ticks
    magnitude = 10 ** math.floor(math.log10(raw))
    for factor in (1, 2, 5, 10):
        if raw <= factor * magnitude:
            return factor * magnitude
    return 10 * magnitude


def timeline_svg(result: ScenarioResult, *, width: int = 900, height: int = 340) -> str:
    """The scenario's timeline as a standalone SVG document."""
    left, right, top, bottom = 64, 16, 30, 84
    plot_w, plot_h = width - left - right, height - top - bottom
    t0 = result.started
    t_end = max(result.ended or t0, *(s.at for s in result.samples), t0 + 1)
    span = t_end - t0
    y_max = max([1] + [getattr(s, k) or 0 for s in result.samples for k, _, _ in SERIES])
    y_step = _nice_step(y_max)
    y_top = math.ceil(y_max / y_step) * y_step
    x_step = _nice_step(span, 8)

    def x(t: float) -> float:
        return left + (t - t0) / span * plot_w

    def y(v: float) -> float:
        return top + plot_h - v / y_top * plot_h

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11">',
           f'<rect width="{width}" height="{height}" fill="#ffffff"/>',
           f'<text x="{left}" y="18" font-size="13" font-weight="bold">{html.escape(result.name)}: '
           f'backlog and delivery</text>']
    # fault bands first, under the lines
    for fault in result.faults:
        colour, label = FAULT_STYLE.get(fault.kind, ("#999999", fault.kind))
        start = x(max(fault.start, t0))
        if fault.instant:
            continue
        end = x(min(fault.end if fault.end is not None else t_end, t_end))
        out.append(f'<rect x="{start:.1f}" y="{top}" width="{max(end - start, 1.5):.1f}" height="{plot_h}" '
                   f'fill="{colour}" fill-opacity="0.16"><title>{html.escape(label)}: '
                   f'{html.escape(fault.detail)}</title></rect>')
        during = next((f.delivery for f in result.fault_delivery
                       if f.kind == fault.kind and abs(f.delivery.start - fault.start) < 1e-6), None)
        if during is not None:
            share = "" if during.fraction is None else f" ({during.fraction:.0%})"
            out.append(f'<text x="{(start + end) / 2:.1f}" y="{top + 22}" text-anchor="middle" fill="{colour}" '
                       f'font-weight="bold" class="during">{during.per_minute:.0f}/min{share}<title>delivered while '
                       f'{html.escape(label)}: {html.escape(during.describe())}</title></text>')
    # grid and axes
    value = 0.0
    while value <= y_top + 1e-9:
        out.append(f'<line x1="{left}" x2="{left + plot_w}" y1="{y(value):.1f}" y2="{y(value):.1f}" stroke="#e5e5e5"/>')
        out.append(f'<text x="{left - 6}" y="{y(value) + 4:.1f}" text-anchor="end">{value:g}</text>')
        value += y_step
    tick = 0.0
    while tick <= span + 1e-9:
        out.append(f'<line x1="{x(t0 + tick):.1f}" x2="{x(t0 + tick):.1f}" y1="{top + plot_h}" '
                   f'y2="{top + plot_h + 4}" stroke="#333"/>')
        out.append(f'<text x="{x(t0 + tick):.1f}" y="{top + plot_h + 16}" text-anchor="middle">{tick:g}</text>')
        tick += x_step
    out.append(f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#333"/>')
    out.append(f'<text x="{left + plot_w / 2}" y="{top + plot_h + 30}" text-anchor="middle">seconds since start</text>')
    out.append(f'<text transform="translate(14,{top + plot_h / 2}) rotate(-90)" text-anchor="middle">envelopes</text>')
    # agent down (power cut until it is back): a grey bar under the axis
    down_start = None
    for sample in result.samples:
        if not sample.agent_up and down_start is None:
            down_start = sample.at
        elif sample.agent_up and down_start is not None:
            out.append(f'<rect x="{x(down_start):.1f}" y="{top + plot_h - 5}" width="{max(x(sample.at) - x(down_start), 1.5):.1f}" '
                       f'height="5" fill="#555"><title>agent down</title></rect>')
            down_start = None
    # the series (a long run is thinned to about MAX_POINTS per line, always keeping its last sample)
    stride = max(1, len(result.samples) // MAX_POINTS)
    shown = result.samples[::stride] + ([result.samples[-1]] if result.samples and stride > 1 else [])
    for key, colour, label in SERIES:
        points = [(x(s.at), y(getattr(s, key))) for s in shown if getattr(s, key) is not None]
        if len(points) > 1:
            path = " ".join(f"{px:.1f},{py:.1f}" for px, py in points)
            out.append(f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="1.8">'
                       f'<title>{html.escape(label)}</title></polyline>')
    # alarms: a bar from signed at the gateway to stored at the lender, near the top
    for alarm in result.alarms:
        x1, x2 = x(max(alarm.signed_at, t0)), x(min(alarm.stored_at, t_end))
        out.append(f'<line x1="{x1:.1f}" x2="{max(x2, x1 + 1.5):.1f}" y1="{top + 8}" y2="{top + 8}" stroke="#9b1d64" '
                   f'stroke-width="4" class="alarm"><title>{html.escape(alarm.name)} {html.escape(alarm.state or "")} '
                   f'(seq {alarm.seq}): {alarm.latency:.2f} s from signed to stored</title></line>')
    # instant faults on top
    for fault in result.faults:
        if not fault.instant:
            continue
        colour, label = FAULT_STYLE.get(fault.kind, ("#999999", fault.kind))
        px = x(fault.start)
        out.append(f'<line x1="{px:.1f}" x2="{px:.1f}" y1="{top}" y2="{top + plot_h}" stroke="{colour}" '
                   f'stroke-width="1.2" stroke-dasharray="4,3"><title>{html.escape(label)}: '
                   f'{html.escape(fault.detail)}</title></line>')
    # legend: series, then the fault kinds that occur
    legend_y = height - 14
    lx = left
    if result.alarms:
        out.append(f'<line x1="{lx}" x2="{lx + 18}" y1="{legend_y - 4}" y2="{legend_y - 4}" stroke="#9b1d64" '
                   f'stroke-width="4"/>')
        out.append(f'<text x="{lx + 22}" y="{legend_y}">alarm (signed to stored)</text>')
        lx += 26 + 6 * len("alarm (signed to stored)")
    for _, colour, label in SERIES:
        out.append(f'<line x1="{lx}" x2="{lx + 18}" y1="{legend_y - 4}" y2="{legend_y - 4}" stroke="{colour}" stroke-width="2"/>')
        out.append(f'<text x="{lx + 22}" y="{legend_y}">{html.escape(label)}</text>')
        lx += 26 + 6 * len(label)
    kinds = []
    for fault in result.faults:
        if fault.kind not in kinds:
            kinds.append(fault.kind)
    legend_y2 = height - 32
    lx = left
    for kind in kinds:
        colour, label = FAULT_STYLE.get(kind, ("#999999", kind))
        instant = any(f.instant for f in result.faults if f.kind == kind)
        if instant:
            out.append(f'<line x1="{lx}" x2="{lx + 14}" y1="{legend_y2 - 4}" y2="{legend_y2 - 4}" stroke="{colour}" '
                       f'stroke-dasharray="4,3" stroke-width="1.5"/>')
        else:
            out.append(f'<rect x="{lx}" y="{legend_y2 - 9}" width="14" height="10" fill="{colour}" fill-opacity="0.3"/>')
        out.append(f'<text x="{lx + 18}" y="{legend_y2}">{html.escape(label)}</text>')
        lx += 30 + 6 * len(label)
    out.append("</svg>")
    return "\n".join(out) + "\n"


# --- numbers per scenario -----------------------------------------------------------------------


def counts(result: ScenarioResult | None) -> dict[str, object]:
    """The headline numbers of one scenario ('' where unknown)."""
    if result is None or result.invariant is None:
        return {"produced": "", "delivered": "", "readings": "", "lost_in_gaps": "", "lost": "", "alarms": "",
                "gap_records": ""}
    inv = result.invariant
    return {
        "produced": inv.head_seq,
        "delivered": inv.stored,
        "readings": inv.readings_delivered,
        "lost_in_gaps": inv.readings_lost_in_gaps,
        "lost": len(inv.lost) + len(inv.not_delivered),
        "alarms": inv.alarms_delivered,
        "gap_records": len(inv.gaps),
    }


def _fmt_offset(t: float, t0: float) -> str:
    return f"{t - t0:7.1f} s"


def _fault_rows(result: ScenarioResult) -> list[tuple[str, str, str, str]]:
    rows = []
    for fault in result.faults:
        label = FAULT_STYLE.get(fault.kind, ("", fault.kind))[1]
        if fault.instant:
            length = "instant"
        elif fault.end is None:
            length = "to the end"
        else:
            length = f"{fault.end - fault.start:.1f} s"
        rows.append((_fmt_offset(fault.start, result.started).strip(), label, length, fault.detail))
    return rows


# --- the documents ------------------------------------------------------------------------------------


_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1000px; color: #222; padding: 0 1em; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 0.6em 0; font-size: 0.92em; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #f4f4f4; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
.passed { color: #17803d; font-weight: bold; } .failed, .error { color: #c0262d; font-weight: bold; }
.skipped, .xfailed { color: #8a6d00; font-weight: bold; }
td.name { max-width: 26em; } td.name small { color: #666; word-break: break-all; }
pre { background: #f7f7f7; padding: 0.6em; overflow-x: auto; font-size: 0.85em; white-space: pre-wrap; }
.verdict { padding: 0.5em 0.8em; border-left: 4px solid #17803d; background: #f3fbf5; }
.verdict.bad { border-color: #c0262d; background: #fdf3f3; }
"""


def _delivery_table(result: ScenarioResult) -> str:
    if not result.fault_delivery:
        return ""
    rows = "".join(
        f"<tr><td>{html.escape(FAULT_STYLE.get(f.kind, ('', f.kind))[1])}</td><td>{html.escape(f.detail)}</td>"
        f"<td class='num'>{f.delivery.seconds:.0f} s</td><td class='num'>{f.delivery.produced}</td>"
        f"<td class='num'>{f.delivery.delivered}</td><td class='num'>{f.delivery.per_minute:.0f}</td>"
        f"<td class='num'>{'—' if f.delivery.fraction is None else f'{f.delivery.fraction:.0%}'}</td></tr>"
        for f in result.fault_delivery)
    return ("<table><tr><th>during</th><th>detail</th><th>lasted</th><th>produced</th><th>delivered</th>"
            "<th>delivered per minute</th><th>delivered / produced</th></tr>" + rows + "</table>")


MAX_ALARM_ROWS = 40


def _alarm_table(result: ScenarioResult) -> str:
    if not result.alarms:
        return ""
    summary = latency_summary(result.alarms)
    head = (f"<p>Alarms, signed at the gateway to stored at the lender: {summary['count']}, "
            f"p50 {summary['p50_s']:.2f} s, p99 {summary['p99_s']:.2f} s, max {summary['max_s']:.2f} s.</p>")
    shown = sorted(result.alarms, key=lambda a: -a.latency)[:MAX_ALARM_ROWS]
    rows = "".join(f"<tr><td class='num'>{a.seq}</td><td>{html.escape(a.name)}</td><td>{html.escape(a.state or '')}</td>"
                   f"<td class='num'>{_fmt_offset(a.signed_at, result.started).strip()}</td>"
                   f"<td class='num'>{a.latency:.2f} s</td></tr>" for a in shown)
    more = "" if len(result.alarms) <= MAX_ALARM_ROWS else f"<p>(the {MAX_ALARM_ROWS} slowest shown)</p>"
    return (head + "<table><tr><th>seq</th><th>alarm</th><th>state</th><th>signed at</th><th>latency</th></tr>"
            + rows + "</table>" + more)


def _during_text(result: ScenarioResult | None) -> str:
    """Delivery during the faults, for the summary: '31/min (94 %)' per fault, or ''."""
    if result is None:
        return ""
    return "; ".join(f"{FAULT_STYLE.get(f.kind, ('', f.kind))[1]} {f.delivery.per_minute:.0f}/min"
                     + ("" if f.delivery.fraction is None else f" ({f.delivery.fraction:.0%})")
                     for f in result.fault_delivery)


def _alarm_text(result: ScenarioResult | None) -> str:
    if result is None or not result.alarms:
        return ""
    summary = latency_summary(result.alarms)
    return f"{summary['count']}, p99 {summary['p99_s']:.2f} s"


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in name).strip("-")[:80] or "scenario"


def _html(run: HilRun, svgs: dict[str, str]) -> str:
    total = len(run.outcomes)
    by = {k: sum(1 for o in run.outcomes if o.outcome == k) for k in ("passed", "failed", "error", "xfailed", "skipped")}
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(run.started))
    took = f"{(run.ended or run.started) - run.started:.0f} s"
    parts = [
        "<!doctype html>", "<html lang='en'><head><meta charset='utf-8'>",
        f"<title>HIL run on {html.escape(run.env_name)}</title><style>{_CSS}</style></head><body>",
        f"<h1>Hardware-in-the-loop run on bench <code>{html.escape(run.env_name)}</code></h1>",
        f"<p>Environment file <code>{html.escape(run.env_path)}</code>, profile <b>{html.escape(run.profile)}</b>, "
        f"started {started}, took {took}. {total} scenario(s): "
        + ", ".join(f"<span class='{k}'>{v} {k}</span>" for k, v in by.items() if v) + ".</p>",
        "<p>Every scenario ends with the same check at the lender: every reading the agent accepted is stored "
        "exactly once, the chain verifies, and every gap is explained by a signed gap record.</p>",
        "<table><tr><th>scenario</th><th>result</th><th>time</th><th>faults</th><th>envelopes produced</th>"
        "<th>stored at the lender</th><th>readings delivered</th><th>readings lost in signed gaps</th>"
        "<th>lost, unexplained</th><th>alarms</th><th>delivered during faults</th><th>alarm latency</th></tr>",
    ]
    for o in run.outcomes:
        c = counts(o.result)
        faults = len(o.result.faults) if o.result else ""
        parts.append(
            f"<tr><td class='name'><a href='#{_slug(o.name)}'>{html.escape(o.label)}</a><br><small>{html.escape(o.name)}</small>"
            f"</td><td class='{o.outcome}'>{o.outcome}</td>"
            f"<td class='num'>{o.duration_s:.1f} s</td><td class='num'>{faults}</td><td class='num'>{c['produced']}</td>"
            f"<td class='num'>{c['delivered']}</td><td class='num'>{c['readings']}</td>"
            f"<td class='num'>{c['lost_in_gaps']}</td><td class='num'>{c['lost']}</td><td class='num'>{c['alarms']}</td>"
            f"<td>{html.escape(_during_text(o.result))}</td><td>{html.escape(_alarm_text(o.result))}</td></tr>")
    parts.append("</table>")
    for o in run.outcomes:
        parts.append(f"<h2 id='{_slug(o.name)}'>{html.escape(o.label)} — <span class='{o.outcome}'>{o.outcome}</span></h2>")
        parts.append(f"<p><code>{html.escape(o.nodeid)}</code>, {o.duration_s:.1f} s</p>")
        if o.outcome == "skipped":
            parts.append(f"<p class='verdict bad'>Skipped: {html.escape(o.message)}</p>")
            continue
        if o.outcome in ("failed", "error", "xfailed"):
            parts.append(f"<div class='verdict bad'><b>{html.escape(o.message)}</b></div>")
        elif o.result is not None and o.result.invariant is not None:
            inv = o.result.invariant
            parts.append(f"<div class='verdict'>Invariant holds: all {inv.head_seq} envelopes the agent produced are "
                         f"at the lender exactly once or explained by one of {len(inv.gaps)} signed gap record(s); "
                         "the chain verifies.</div>")
        result = o.result
        if result is None:
            if o.details:
                parts.append(f"<pre>{html.escape(o.details[-6000:])}</pre>")
            continue
        if o.name in svgs:
            parts.append(svgs[o.name])
            parts.append(f"<p><a href='timeline-{_slug(o.name)}.svg'>timeline as an SVG file</a></p>")
        c = counts(result)
        parts.append("<table>" + "".join(f"<tr><th>{html.escape(k)}</th><td class='num'>{html.escape(str(v))}</td></tr>" for k, v in (
            ("envelopes produced (agent's last seq)", c["produced"]), ("envelopes stored at the lender", c["delivered"]),
            ("readings delivered", c["readings"]), ("readings lost, reported in signed gap records", c["lost_in_gaps"]),
            ("envelopes lost without explanation / not delivered", c["lost"]), ("alarms delivered", c["alarms"]),
            ("signed gap records", c["gap_records"]), ("agent starts", result.agent_starts),
            ("power cuts", result.power_cuts),
            ("final drain took", f"{result.drained_after_s} s" if result.drained_after_s is not None else "—"),
        )) + "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in result.notes.items())
            + "</table>")
        if result.invariant is not None and result.invariant.gaps:
            parts.append("<table><tr><th>gap record seq</th><th>reason</th><th>seqs</th><th>readings</th></tr>" + "".join(
                f"<tr><td class='num'>{g.seq}</td><td>{html.escape(g.reason)}</td>"
                f"<td>{'' if g.first is None else f'{g.first}..{g.last}'}</td><td class='num'>{'' if g.count is None else g.count}</td></tr>"
                for g in result.invariant.gaps) + "</table>")
        parts.append(_delivery_table(result))
        parts.append(_alarm_table(result))
        rows = _fault_rows(result)
        if rows:
            parts.append("<table><tr><th>at</th><th>fault</th><th>lasted</th><th>detail</th></tr>" + "".join(
                f"<tr><td class='num'>{html.escape(a)}</td><td>{html.escape(b)}</td><td>{html.escape(c_)}</td>"
                f"<td>{html.escape(d)}</td></tr>" for a, b, c_, d in rows) + "</table>")
        else:
            parts.append("<p>No faults injected.</p>")
        if result.proxy:
            parts.append("<table><tr><th>link</th>" + "".join(f"<th>{k}</th>" for k in result.proxy["up"]) + "</tr>" + "".join(
                f"<tr><td>{d}</td>" + "".join(f"<td class='num'>{v}</td>" for v in stats.values()) + "</tr>"
                for d, stats in result.proxy.items()) + "</table>")
        if o.outcome in ("failed", "error", "xfailed"):
            if o.details:
                parts.append(f"<details><summary>failure details</summary><pre>{html.escape(o.details[-8000:])}</pre></details>")
            for part, path in result.logs.items():
                parts.append(f"<details><summary>{html.escape(part)} log (last lines), {html.escape(path)}</summary>"
                             f"<pre>{html.escape(tail(Path(path), 60))}</pre></details>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _markdown(run: HilRun) -> str:
    lines = [f"# HIL run on bench `{run.env_name}` ({run.profile})", "",
             f"Environment `{run.env_path}`; {len(run.outcomes)} scenario(s); "
             f"{'FAILED' if run.failed else 'all passed or skipped'}.", "",
             "| scenario | result | time | faults | produced | delivered | lost in signed gaps | lost unexplained "
             "| delivered during faults | alarms, latency |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |"]
    for o in run.outcomes:
        c = counts(o.result)
        faults = len(o.result.faults) if o.result else ""
        lines.append(f"| {o.label} | {o.outcome} | {o.duration_s:.1f} s | {faults} | {c['produced']} | {c['delivered']} | "
                     f"{c['lost_in_gaps']} | {c['lost']} | {_during_text(o.result)} | {_alarm_text(o.result)} |")
    for o in run.outcomes:
        if o.outcome in ("failed", "error", "xfailed", "skipped"):
            lines += ["", f"## {o.label}: {o.outcome}", "", f"`{o.nodeid}`", "", o.message]
        if o.result is not None and o.name:
            lines += ["", f"![{o.name} timeline](timeline-{_slug(o.name)}.svg)"] if o.outcome != "skipped" else []
    return "\n".join(lines) + "\n"


def _junit(run: HilRun) -> bytes:
    suite = ET.Element("testsuite", name=f"hil-{run.env_name}", tests=str(len(run.outcomes)),
                       failures=str(sum(o.outcome == "failed" for o in run.outcomes)),
                       errors=str(sum(o.outcome == "error" for o in run.outcomes)),
                       skipped=str(sum(o.outcome in ("skipped", "xfailed") for o in run.outcomes)),
                       time=f"{(run.ended or run.started) - run.started:.3f}",
                       timestamp=time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(run.started)))
    props = ET.SubElement(suite, "properties")
    for key, value in (("env", run.env_name), ("env_file", run.env_path), ("profile", run.profile)):
        ET.SubElement(props, "property", name=key, value=value)
    for o in run.outcomes:
        module, _, name = o.nodeid.rpartition("::")
        case = ET.SubElement(suite, "testcase", classname=module.replace("/", ".").removesuffix(".py"), name=name,
                             time=f"{o.duration_s:.3f}")
        if o.result is not None:
            case_props = ET.SubElement(case, "properties")
            for key, value in counts(o.result).items():
                ET.SubElement(case_props, "property", name=key, value=str(value))
            ET.SubElement(case_props, "property", name="faults",
                          value="; ".join(f"{r[0]} {r[1]} ({r[2]})" for r in _fault_rows(o.result)))
            ET.SubElement(case_props, "property", name="delivered_during_faults", value=_during_text(o.result))
            ET.SubElement(case_props, "property", name="alarm_latency", value=_alarm_text(o.result))
        if o.outcome == "failed":
            ET.SubElement(case, "failure", message=o.message[:2000]).text = o.details
        elif o.outcome == "error":
            ET.SubElement(case, "error", message=o.message[:2000]).text = o.details
        elif o.outcome in ("skipped", "xfailed"):
            ET.SubElement(case, "skipped", message=o.message[:2000])
    ET.indent(suite)
    return ET.tostring(suite, encoding="utf-8", xml_declaration=True)


def write_report(run: HilRun, directory: str | Path) -> Path:
    """Write the run's JUnit XML, HTML page, Markdown summary, JSON and SVG plots into `directory`; returns index.html."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for old in directory.glob("timeline-*.svg"):
        old.unlink()
    svgs = {}
    for o in run.outcomes:
        if o.result is not None and o.result.samples:
            svg = timeline_svg(o.result)
            (directory / f"timeline-{_slug(o.name)}.svg").write_text(svg, encoding="utf-8")
            svgs[o.name] = svg
    (directory / "junit.xml").write_bytes(_junit(run))
    (directory / "summary.md").write_text(_markdown(run), encoding="utf-8")
    (directory / "results.json").write_text(json.dumps({
        "env": run.env_name, "env_file": run.env_path, "profile": run.profile, "started": run.started,
        "ended": run.ended, "failed": run.failed,
        "scenarios": [{"nodeid": o.nodeid, "name": o.name, "outcome": o.outcome, "duration_s": o.duration_s,
                       "message": o.message, "result": o.result.to_json() if o.result else None} for o in run.outcomes],
    }, indent=1), encoding="utf-8")
    index = directory / "index.html"
    index.write_text(_html(run, svgs), encoding="utf-8")
    return index


