"""lender — the receiving side: CoAP ingest, verification, storage, alerts, evidence export."""
