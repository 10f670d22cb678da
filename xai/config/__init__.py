"""Report configs: the typed schema (:mod:`.schema`), and loading a shipped profile or a user's file
(:mod:`.loader`). ``xai config check FILE`` validates one; ``xai config show NAME`` prints it resolved."""
from .loader import ConfigError, load, resolve, shipped
from .schema import ReportConfig

__all__ = ["ConfigError", "ReportConfig", "load", "resolve", "shipped"]
