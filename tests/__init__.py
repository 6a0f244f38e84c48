"""The project's tests: a package, so helpers import as `tests.kit.<part>` (pytest puts the repository on sys.path)."""
