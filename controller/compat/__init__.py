"""The Parallax control plane's runtime contract (``@parallaxai/runtime-interface``), as pure mappings to
and from Agents: ``agent_config`` turns an ``AgentConfig`` into the body ``admit`` judges, ``agent_handle``
turns a record into an ``AgentHandle`` and a change of one into the runtime events the client listens for.
"""
