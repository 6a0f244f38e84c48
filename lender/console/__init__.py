"""lender.console — the lender's web console: portfolio, asset pages, alarm review, accounts, webhooks, metrics.

Floors, read top-down: `records` (the console's own SQLite file), `accounts`
(staff, sessions), `portfolio` (every asset's state in memory), `live` (the
watch on the evidence store), `webhooks` (outbox and delivery), `metrics`,
`drawing` and `views` (what pages show), `app` (routes), `server` (wiring).
It reads the evidence floor (lender.evidence) and writes to it only through
`EvidenceStore.add_review`. docs/lender-console.md is the user's guide.
"""
