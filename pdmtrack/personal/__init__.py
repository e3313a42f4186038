"""Personalised image segmentation and retrieval (PerSAM(PDM), PDM re-ranking, global indexes)."""
