"""Docker Swarm mode as a runtime: each agent a service with one replica."""
