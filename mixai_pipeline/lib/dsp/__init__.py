"""Audio DSP: loudness measurement (ITU-R BS.1770 / EBU R128), filters, dynamics, master chain."""
