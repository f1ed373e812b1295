"""Autoencoder pre-training on unlabeled images, and the library of encoders it makes (issue 15, item 3)."""
