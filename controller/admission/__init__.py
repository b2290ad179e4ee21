"""Whether an Agent may be admitted: the JSON schema, Docker's grammars, the security policy. Pure."""
