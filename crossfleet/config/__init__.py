"""Typed, validated configuration for crossfleet."""

from crossfleet.config.errors import ConfigError
from crossfleet.config.loader import load_from_context
from crossfleet.config.model import AppConfig, parse_config

__all__ = ["AppConfig", "ConfigError", "load_from_context", "parse_config"]
