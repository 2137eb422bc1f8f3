"""The PyTorch adapter: the only layer besides ``models`` that imports torch."""
