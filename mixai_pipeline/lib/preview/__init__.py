"""Previews: the most representative excerpt, AAC encoding, waveform peaks and image."""
