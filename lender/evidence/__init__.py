"""lender.evidence — the lender's evidence floor: the store and its registry data, ingest decisions, alarm and status
views, export. Pure of CoAP: the CoAP floor (lender.coap) calls into it."""
