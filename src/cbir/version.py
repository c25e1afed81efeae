"""The package version (one place: ``cbir.__version__``, index.json and exported models record it)."""

__version__ = "0.1.0"
