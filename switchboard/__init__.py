"""Switchboard: a personal AI assistant as a metered service."""

__version__ = "0.1.0"
