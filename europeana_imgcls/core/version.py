"""The package version, in one place (the package, the model card and the annotations name it)."""

__version__ = "0.1.0"
HOMEPAGE = "https://pypi.org/project/europeana-imgcls/"  # where people read what made an annotation
