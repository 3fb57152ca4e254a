"""A synchronous request filter: a bearer token from a header, looked up in the config; 401 without a good one.

    filters = [{ plugin = "mypkg.auth:CheckToken", config = { tokens = { "s3cret" = "alice" } } }]

A known token goes upstream as `x-user: NAME` (the token itself is removed); anything else is answered 401.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from fastmesh.plugins import Answer, PluginConfigError, Request


class CheckToken:
    """401 unless the request carries a known bearer token; the user's name goes upstream in x-user."""

    @dataclass
    class Config:
        tokens: dict[str, str] = field(default_factory=dict)      # token -> user name
        header: str = "authorization"                             # where the token is ("Bearer TOKEN" or TOKEN)
        user_header: str = "x-user"                               # what the upstream gets the user's name in
        realm: str = "fastmesh"

        def __post_init__(self) -> None:
            if not self.tokens:
                raise PluginConfigError("tokens", 'at least one token, like { "s3cret" = "alice" }', {})

    def __init__(self, config: CheckToken.Config) -> None:
        self.config = config
        self.denied = Answer(401, b"unauthorized\n", {"www-authenticate": f'Bearer realm="{config.realm}"'})

    def on_request(self, request: Request) -> Answer | None:
        value = request.header(self.config.header)
        token = value[7:] if value is not None and value[:7].lower() == "bearer " else value
        user = self.config.tokens.get(token) if token else None
        if user is None:
            return self.denied
        request.remove_header(self.config.header)
        request.set_header(self.config.user_header, user)
        return None
