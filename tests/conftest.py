"""Shared test setup: hypothesis profiles (CI runs the full example counts)."""
from hypothesis import HealthCheck, settings

settings.register_profile("default", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("default")
