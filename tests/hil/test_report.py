"""The run report: a timeline SVG whose lines and fault bands sit where the numbers say, an HTML page and
Markdown summary a person can read, and JUnit XML a CI server can."""
from __future__ import annotations

import json
import shutil
import subprocess
import xml.etree.ElementTree as ET

import pytest

from hil.bench import ScenarioResult
from hil.faults import FaultRecord
from hil.invariant import GapSummary, InvariantReport
from hil.measure import AlarmDelivery, Delivery, FaultDelivery
from hil.observer import Sample
from hil.report import HilRun, ScenarioOutcome, timeline_svg, write_report

SVG = "{http://www.w3.org/2000/svg}"
T0 = 1_800_000_000.0


def outage_result(name: str = "test_outage") -> ScenarioResult:
    """40 s: steady, a partition from 10 s to 30 s (backlog grows to 100), a power cut at 35 s, drained."""
    samples = []
    for second in range(41):
        produced = 5 * second
        delivered = produced if not 10 <= second < 30 else 50
        samples.append(Sample(T0 + second, produced - delivered, produced, delivered, delivered, second,
                              second not in (35, 36)))
    inv = InvariantReport(device="gw", head_seq=200, stored=200, readings_delivered=198, alarms_delivered=0,
                          gaps=(GapSummary(180, "power-loss", None, None, None),), lost=(), not_delivered=(),
                          duplicates=(), foreign=(), bad_signatures=(), chain_problems=())
    return ScenarioResult(name=name, env="sim", profile="short", started=T0, ended=T0 + 40, samples=samples,
                          faults=[FaultRecord("partition", T0 + 10, T0 + 30, "no link for 20 s"),
                                  FaultRecord("power-cut", T0 + 35, T0 + 35, "agent pid 7 killed", instant=True)],
                          invariant=inv, agent_starts=3, power_cuts=1, notes={"backlog drained in": "4.2 s"})


def test_the_timeline_puts_lines_and_fault_bands_where_the_numbers_say():
    svg = ET.fromstring(timeline_svg(outage_result()))
    assert svg.tag == f"{SVG}svg"
    frame = [r for r in svg.iter(f"{SVG}rect") if r.get("fill") == "none"][0]
    left, top = float(frame.get("x")), float(frame.get("y"))
    width, height = float(frame.get("width")), float(frame.get("height"))
    lines = {p.find(f"{SVG}title").text: p for p in svg.iter(f"{SVG}polyline")}
    assert set(lines) == {"produced (agent's last seq)", "delivered (stored at the lender)",
                          "backlog (in the agent's spool)"}
    for polyline in lines.values():
        points = [tuple(map(float, p.split(","))) for p in polyline.get("points").split()]
        assert len(points) == 41
        assert all(left - 0.1 <= x <= left + width + 0.1 and top - 0.1 <= y <= top + height + 0.1 for x, y in points)
    backlog = [tuple(map(float, p.split(","))) for p in lines["backlog (in the agent's spool)"].get("points").split()]
    peak = min(backlog, key=lambda p: p[1])  # SVG y grows downwards
    assert abs(peak[0] - (left + 29 / 40 * width)) < 1.0  # the backlog peaks at the end of the outage
    band = [r for r in svg.iter(f"{SVG}rect") if r.find(f"{SVG}title") is not None
            and r.find(f"{SVG}title").text.startswith("no link")][0]
    assert abs(float(band.get("x")) - (left + 0.25 * width)) < 1.0
    assert abs(float(band.get("width")) - 0.5 * width) < 1.0
    cut = [line for line in svg.iter(f"{SVG}line") if line.find(f"{SVG}title") is not None][0]
    assert abs(float(cut.get("x1")) - (left + 35 / 40 * width)) < 1.0
    assert "power cut" in timeline_svg(outage_result()) and "agent down" in timeline_svg(outage_result())


def lossy_result() -> ScenarioResult:
    """The outage result with delivery during its partition measured and two alarms, one slow."""
    result = outage_result()
    result.fault_delivery = [FaultDelivery("partition", "no link for 20 s", Delivery(T0 + 10, T0 + 30, 100, 0))]
    result.alarms = [AlarmDelivery(120, "alarm.silence.gateway", "raised", T0 + 12, T0 + 30.5),
                     AlarmDelivery(160, "alarm.silence.gateway", "cleared", T0 + 32, T0 + 32.4)]
    return result


def test_each_fault_band_says_its_delivery_and_each_alarm_is_a_bar_from_signed_to_stored():
    svg = ET.fromstring(timeline_svg(lossy_result()))
    frame = [r for r in svg.iter(f"{SVG}rect") if r.get("fill") == "none"][0]
    left, width = float(frame.get("x")), float(frame.get("width"))
    [during] = [t for t in svg.iter(f"{SVG}text") if t.get("class") == "during"]
    assert during.text == "0/min (0%)" and abs(float(during.get("x")) - (left + 0.5 * width)) < 1.0  # mid-band
    assert "0 delivered in 20 s" in during.find(f"{SVG}title").text
    bars = [line for line in svg.iter(f"{SVG}line") if line.get("class") == "alarm"]
    assert len(bars) == 2
    slow = bars[0]
    assert abs(float(slow.get("x1")) - (left + 12 / 40 * width)) < 1.0
    assert abs(float(slow.get("x2")) - (left + 30.5 / 40 * width)) < 1.0
    assert "18.50 s from signed to stored" in slow.find(f"{SVG}title").text


def test_the_page_and_summary_show_delivery_during_faults_and_alarm_latency(tmp_path):
    run = HilRun(env_name="sim", env_path="hil/envs/sim.toml", profile="short", started=T0, ended=T0 + 50, outcomes=[
        ScenarioOutcome("hil/scenarios/test_c.py::test_flaky", "test_flaky", "passed", 40.0, result=lossy_result(),
                        title="Scenario (c): a flaky link")])
    index = write_report(run, tmp_path / "report")
    page = index.read_text()
    assert "delivered per minute" in page and "p99 18.50 s" in page and "alarm.silence.gateway" in page
    summary = (tmp_path / "report" / "summary.md").read_text()
    assert "| no link 0/min (0%) | 2, p99 18.50 s |" in summary
    result = json.loads((tmp_path / "report" / "results.json").read_text())["scenarios"][0]["result"]
    assert result["fault_delivery"][0]["per_minute"] == 0.0 and result["alarm_latency"]["p99_s"] == 18.5
    props = {p.get("name"): p.get("value") for p in ET.parse(tmp_path / "report" / "junit.xml").getroot()
             .find("testcase/properties")}
    assert props["alarm_latency"] == "2, p99 18.50 s" and props["delivered_during_faults"] == "no link 0/min (0%)"


def test_a_timeline_without_samples_is_still_a_valid_picture():
    empty = ScenarioResult(name="t", env="sim", profile="short", started=T0, ended=T0)
    ET.fromstring(timeline_svg(empty))


def run_of_three(tmp_path) -> HilRun:
    failing = outage_result("test_failing")
    log = tmp_path / "agent.log"
    log.write_text("agent: starting\nagent: the last line of the log\n")
    failing.logs = {"agent": str(log)}
    return HilRun(env_name="sim", env_path="hil/envs/sim.toml", profile="short", started=T0, ended=T0 + 100, outcomes=[
        ScenarioOutcome("hil/scenarios/test_o.py::test_outage", "test_outage", "passed", 40.0,
                        result=outage_result(), title="Scenario (b): a 24-hour outage"),
        ScenarioOutcome("hil/scenarios/test_o.py::test_failing", "test_failing", "failed", 41.0,
                        message="InvariantViolation: lost seqs 17..23", details="Traceback ...", result=failing),
        ScenarioOutcome("hil/scenarios/test_r.py::test_relay", "test_relay", "skipped", 0.0,
                        message="bench sim lacks: power_relay (the bench declares no [power_relay])"),
    ])


def test_the_report_is_a_page_a_summary_json_junit_and_svg_files(tmp_path):
    index = write_report(run_of_three(tmp_path), tmp_path / "report")
    report = tmp_path / "report"
    assert index == report / "index.html"
    assert sorted(p.name for p in report.iterdir()) == [
        "index.html", "junit.xml", "results.json", "summary.md", "timeline-test_failing.svg", "timeline-test_outage.svg"]
    page = index.read_text()
    assert "Scenario (b): a 24-hour outage" in page and "lost seqs 17..23" in page
    assert page.count("<svg") == 2 and "the last line of the log" in page  # a failure shows its logs
    assert "bench sim lacks: power_relay" in page and "backlog drained in" in page
    suite = ET.parse(report / "junit.xml").getroot()
    assert (suite.get("tests"), suite.get("failures"), suite.get("skipped")) == ("3", "1", "1")
    case = suite.find("testcase[@name='test_outage']")
    props = {p.get("name"): p.get("value") for p in case.find("properties")}
    assert props["produced"] == "200" and props["delivered"] == "200" and "no link" in props["faults"]
    summary = (report / "summary.md").read_text()
    assert "| Scenario (b): a 24-hour outage | passed | 40.0 s | 2 | 200 | 200 | 0 | 0 |" in summary
    assert "![test_outage timeline](timeline-test_outage.svg)" in summary


@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs chromium (apt-get install chromium) to render")
def test_the_report_page_renders_in_a_browser(tmp_path):
    index = write_report(run_of_three(tmp_path), tmp_path / "report")
    dom = subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom", index.as_uri()],
                         capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert dom.stdout.count("<polyline") == 6 and "Scenario (b): a 24-hour outage" in dom.stdout


def test_a_long_run_is_thinned_to_a_picture_a_browser_draws_quickly():
    result = outage_result()
    result.samples = [Sample(T0 + i / 100, i % 7, i, i, i, i, True) for i in range(10_000)]
    result.ended = T0 + 100
    svg = ET.fromstring(timeline_svg(result))
    frame = [r for r in svg.iter(f"{SVG}rect") if r.get("fill") == "none"][0]
    right_edge = float(frame.get("x")) + float(frame.get("width"))
    for polyline in svg.iter(f"{SVG}polyline"):
        points = [tuple(map(float, p.split(","))) for p in polyline.get("points").split()]
        assert 2000 <= len(points) <= 2001
        assert abs(points[-1][0] - right_edge) < 0.5  # the last sample is always drawn
