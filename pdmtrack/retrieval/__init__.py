"""Personalised retrieval: PDM scoring of galleries, global descriptors, FAISS indexes."""
