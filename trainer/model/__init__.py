"""The H-JEPA model: the ViT, positional embeddings, the losses (``hjepa`` builds it)."""
