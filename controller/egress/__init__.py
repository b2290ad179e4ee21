"""Egress policy: what an agent may reach outside its network (``spec.egress``).

``policy`` holds the pure decisions (parsing allow entries, matching a destination, each agent type's
default list); ``gateway`` is the controller-side forward proxy that enforces them.
"""
