"""Corpora, preprocessing into feature folders, and the training datasets read from them."""
