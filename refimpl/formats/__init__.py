"""Checkpoint bytes: safetensors (read and written), torch's pytorch_model.bin (read), number formats.

Nothing here knows about models: ``refimpl.load.weights`` turns these tensors into a model's weights.
"""
