"""Prometheus metrics at ``/metrics`` (prometheus_client): what the lender holds, refuses and owes.

Every figure is read at scrape time from where it lives — the evidence store
(read-only aggregates), the portfolio in memory, the webhook cursors — so a
scrape never disagrees with the pages. Rates are Prometheus's to compute:
``rate(pledgewatch_envelopes_stored_total[5m])`` is the ingest rate.

| metric | type | labels |
| --- | --- | --- |
| ``pledgewatch_envelopes_stored_total`` | counter | |
| ``pledgewatch_records_stored_total`` | counter | |
| ``pledgewatch_refusals_total`` | counter | ``reason`` (telemetry.ack reason names), ``kind`` (envelope / request) |
| ``pledgewatch_quarantine_entries`` / ``_bytes`` | gauge | |
| ``pledgewatch_devices`` | gauge | ``status`` (active / revoked) |
| ``pledgewatch_assets`` | gauge | ``state`` (the portfolio's states) |
| ``pledgewatch_webhook_backlog`` | gauge | ``endpoint`` |
| ``pledgewatch_webhook_deliveries_total`` | counter | ``endpoint``, ``outcome`` (delivered / failed) |
| ``pledgewatch_console_judged_total`` | counter | |
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from lender.console.portfolio import Portfolio
from lender.console.records import ConsoleRecords
from lender.console.tables import Tables, open_tables
from lender.console.webhooks import Outbox
from telemetry.envelope import Reason

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class LenderCollector(Collector):
    def __init__(self, data_dir: Path, portfolio: Portfolio, records: Callable[[], ConsoleRecords],
                 judged: Callable[[], int], store_url: str | None = None) -> None:
        self.data_dir = Path(data_dir)
        self.store_url = store_url
        self.portfolio = portfolio
        self.records = records
        self.judged = judged

    def collect(self) -> Iterator:
        with open_tables(self.data_dir, self.store_url, timeout=10) as tables:
            yield from self._evidence(tables)
        assets = GaugeMetricFamily("pledgewatch_assets", "pledged assets by portfolio state", labels=["state"])
        for state, count in self.portfolio.counts().items():
            assets.add_metric([state], count)
        yield assets
        yield CounterMetricFamily("pledgewatch_console_judged", "device judgements made by the console",
                                  value=self.judged())
        outbox = Outbox(self.records())
        backlog = GaugeMetricFamily("pledgewatch_webhook_backlog", "events not yet delivered", labels=["endpoint"])
        deliveries = CounterMetricFamily("pledgewatch_webhook_deliveries", "webhook POSTs by outcome",
                                         labels=["endpoint", "outcome"])
        for url, *_rest, delivered_total, failed_total in outbox.cursors():
            backlog.add_metric([url], outbox.backlog(url))
            deliveries.add_metric([url, "delivered"], delivered_total)
            deliveries.add_metric([url, "failed"], failed_total)
        yield backlog
        yield deliveries

    def _evidence(self, tables: Tables) -> Iterator:
        (envelopes,), = tables.rows("SELECT count(*) FROM envelopes")
        (records,), = tables.rows("SELECT count(*) FROM records")
        yield CounterMetricFamily("pledgewatch_envelopes_stored", "envelopes verified and stored", value=envelopes)
        yield CounterMetricFamily("pledgewatch_records_stored", "SenML records stored", value=records)
        refusals = CounterMetricFamily("pledgewatch_refusals", "envelopes and requests refused",
                                       labels=["reason", "kind"])
        totals: dict[tuple[str, str], int] = {}
        for kind, reason, count in tables.rows("SELECT kind, reason, sum(count) FROM quarantine GROUP BY kind, reason"
                                               " UNION ALL SELECT kind, reason, count FROM quarantine_overflow"):
            key = (_reason(reason), kind)
            totals[key] = totals.get(key, 0) + int(count)  # PostgreSQL's sum of bigints is a numeric
        for (reason, kind), count in sorted(totals.items()):
            refusals.add_metric([reason, kind], count)
        yield refusals
        (entries, size), = tables.rows("SELECT count(*), coalesce(sum(length(raw)), 0) FROM quarantine")
        yield GaugeMetricFamily("pledgewatch_quarantine_entries", "distinct refused items kept", value=entries)
        yield GaugeMetricFamily("pledgewatch_quarantine_bytes", "bytes of refused items kept", value=int(size))
        devices = GaugeMetricFamily("pledgewatch_devices", "registered devices", labels=["status"])
        counted = dict(tables.rows("SELECT status, count(*) FROM devices GROUP BY status"))
        for status in ("active", "revoked"):
            devices.add_metric([status], counted.get(status, 0))
        yield devices


def _reason(code: int) -> str:
    try:
        return Reason(code).name.lower()
    except ValueError:
        return str(code)


def registry_for(data_dir: Path, portfolio: Portfolio, records: Callable[[], ConsoleRecords],
                 judged: Callable[[], int], store_url: str | None = None) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(LenderCollector(data_dir, portfolio, records, judged, store_url))
    return registry


def exposition(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)

