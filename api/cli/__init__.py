"""The parallax command: its HTTP client, commands, and the image builder."""
