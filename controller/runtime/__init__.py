"""What runs agents: the Runtime interface, the in-memory fake, and the local Docker implementation."""
