"""Demo uploads rendered from real music (music21's Bach chorales) with a General MIDI SoundFont."""
