"""Pure core of the render farm: spec, plan, noise, blend, encode, report. No Ray import here."""

__version__ = "0.1.0"
