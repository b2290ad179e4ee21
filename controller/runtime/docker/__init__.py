"""The local Docker Engine as a Runtime: render, the Engine API driver, events and errors mapped to agents."""
