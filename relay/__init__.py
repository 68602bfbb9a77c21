"""relay: the appliance (config, rules, sources, sinks, queues, CLI)."""
from .__version__ import __version__

__all__ = ["__version__"]
