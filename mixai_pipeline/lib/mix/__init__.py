"""The product's 12 vocal-mix presets and the vocal chain that applies them."""
