"""telemetry — the wire contract: SenML packs, the signed envelope, the hash chain, device identity. Pure code, no I/O."""
