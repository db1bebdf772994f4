"""ILA-SOC agent: configuration, command line and wiring of collector → queue_store → forwarder."""

from ila_agent.version import __version__

__all__ = ["__version__"]
