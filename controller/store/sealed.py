"""How the stores keep records on disk with their secret material sealed (``controller.store.cipher``).

An agent's stored manifest has each inline env value as ``{"sealed": "v1:<key>:..."}`` (references,
``secretKeyRef``, are not secret and stay as they are); a Secret's stored body has each value sealed.
A stored manifest with a plain string env value is one from before sealing: it loads, and the store
seals it at open (``needs_reseal``), as it does any value sealed with a key that is no longer primary.
"""

from __future__ import annotations

import json
from typing import Any

from controller.model.agent import Agent, SpecDefaults
from controller.model.secret import Secret
from controller.store.cipher import SecretCipher


def seal_manifest(agent: Agent, cipher: SecretCipher) -> str:
    """The manifest text a store writes: every inline env value sealed."""
    manifest = agent.to_manifest(redact=False)
    spec = manifest["spec"]
    spec["env"] = {k: ({"sealed": cipher.seal(v)} if isinstance(v, str) else v) for k, v in spec["env"].items()}
    return json.dumps(manifest, sort_keys=True)


def open_manifest(text: str, cipher: SecretCipher, defaults: SpecDefaults) -> tuple[Agent, bool]:
    """The agent a stored manifest holds, and whether it must be sealed again (a plain value from
    before sealing, or one sealed with a key that is not the primary one)."""
    data: dict[str, Any] = json.loads(text)
    spec = data.get("spec") or {}
    stale = False
    env: dict[str, Any] = {}
    for key, value in (spec.get("env") or {}).items():
        if isinstance(value, str):
            stale = True
            env[key] = value
        elif isinstance(value, dict) and "sealed" in value:
            stale = stale or cipher.sealed_with(value["sealed"]) != cipher.primary
            env[key] = cipher.open(value["sealed"])
        else:
            env[key] = value
    spec["env"] = env
    return Agent.from_manifest(data, defaults), stale


def seal_secret(secret: Secret, cipher: SecretCipher) -> str:
    return json.dumps(
        {
            "name": secret.name,
            "uid": secret.uid,
            "version": secret.version,
            "keyVersions": secret.key_versions,
            "labels": secret.labels,
            "creationTimestamp": secret.creation_timestamp,
            "data": {k: cipher.seal(v) for k, v in secret.data.items()},
        },
        sort_keys=True,
    )


def open_secret(text: str, cipher: SecretCipher) -> tuple[Secret, bool]:
    """The Secret a stored body holds, and whether it must be sealed again (another key's)."""
    body = json.loads(text)
    data = {k: cipher.open(v) for k, v in body["data"].items()}
    stale = any(cipher.sealed_with(v) != cipher.primary for v in body["data"].values())
    secret = Secret(
        body["name"],
        data,
        dict(body.get("labels") or {}),
        uid=body["uid"],
        version=int(body["version"]),
        key_versions={k: int(v) for k, v in (body.get("keyVersions") or {}).items()},
        creation_timestamp=body.get("creationTimestamp"),
    )
    return secret, stale
