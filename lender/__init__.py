"""lender — the receiving side, in floors read top-down (docs/layout.md):

* `lender.evidence` — store, registry data, ingest decisions, alarm and status views, export;
* `lender.enrollment` — technicians, the decision desk, OSCORE contexts;
* `lender.coap` — block assembly, the ingest thread, the resource base and the routes ``/t``, ``/n``, ``/enroll``;
* `lender.server` — wires the floors into one CoAP endpoint; `lender.cli` — every `pledgewatch lender` command.
"""
