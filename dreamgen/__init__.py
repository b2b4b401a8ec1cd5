"""dreamgen: text-to-3D by score distillation."""

__version__ = "0.1.0"
