"""Framewatch: watch LLM traffic for trigger framings, by meaning, and export failure rates by framing."""

__version__ = "0.1.0"
