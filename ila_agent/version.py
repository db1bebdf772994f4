"""The agent's version: the one place it is defined."""

__version__ = "0.1.0"
USER_AGENT = f"ila-soc-agent/{__version__}"  # protocol.md: every request carries it
