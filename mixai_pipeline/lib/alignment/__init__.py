"""Alignment of a vocal stem against its instrumental (draft)."""
