"""The single source of truth for the version (the packages read it too)."""
__version__ = "0.1.0"
