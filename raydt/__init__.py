"""raydt: sweeps of Decision Transformers initialised from pre-trained language models."""

__version__ = "0.1.0"
