"""agent — the gateway daemon: sampling, edge rules, signing, the durable spool, the uplink, health."""
