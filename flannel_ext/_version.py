"""The package version, in one place (the internals import it from here, not from the public API)."""
__version__ = "0.1.0"
