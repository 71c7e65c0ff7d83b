"""modelpress: compress trained models and prove they are still good enough to ship."""

__version__ = "0.1.0"
