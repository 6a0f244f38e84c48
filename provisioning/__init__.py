"""provisioning — the field technician's tooling: identity, enrollment, flashing nodes, pre-flight checks."""
