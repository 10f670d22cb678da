"""xai: an explainability report for image classifiers."""

__version__ = "0.1.0"
