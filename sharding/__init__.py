"""Meshes, logical-axis rules and shardings: how the model's logical axes land on devices."""
