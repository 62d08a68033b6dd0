"""attnkd: knowledge distillation with attention transfer, as a reproducible DVC pipeline."""

__version__ = "0.1.0"
