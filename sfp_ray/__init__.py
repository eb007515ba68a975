"""sfp-ray: a Ray actor-based simulator of split federated prompt fine-tuning (SFPrompt)."""

__version__ = "0.1.0"
