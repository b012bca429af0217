"""The package version, in one place (the package, the model card and the annotations name it)."""

__version__ = "0.1.0"
