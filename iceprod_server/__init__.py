"""IceProd server: the web service at the heart of IceCube's dataset processing."""

__version__ = "0.1.0"
