"""zhlora: teach a Llama model Chinese with LoRA, and prove what it forgot."""

__version__ = "0.1.0"
