"""Managed identities of the fleet's callers (pure, deterministic from the seed).

Real token requests are identical per identity: every pod or VM of one user-assigned identity
asks IMDS for the same resource with the same `client_id`, so the URL repeats byte for byte. A
fleet that gave each workflow a random `client_id` would let a proxy tell every workflow apart
by its URL alone, which no real deployment allows. So each caller (an orchestrator) owns a few
identities, each with one fixed resource and client id, and every workflow of that caller uses
one of them.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import quote

TOKEN_PATH = "/metadata/identity/oauth2/token?api-version=2018-02-01"
RESOURCES: tuple[str, ...] = (
    "https://management.azure.com/",
    "https://storage.azure.com/",
    "https://vault.azure.net",
)
IDENTITIES_PER_CALLER = 4

_UUID4_CLEAR = ~((0xF000 << 64) | (0xC000 << 48)) & ((1 << 128) - 1)
_UUID4_SET = (0x4000 << 64) | (0x8000 << 48)


@dataclass(frozen=True)
class Identity:
    """One user-assigned managed identity: what it asks a token for, and its client id."""

    caller: str
    index: int  # among its caller's identities
    client_id: str  # a GUID, as Azure writes it
    resource: str

    @property
    def path(self) -> str:
        """The IMDS token path and query this identity always sends (the lean clients')."""
        return f"{TOKEN_PATH}&resource={quote(self.resource, safe='')}&client_id={self.client_id}"

    @property
    def scope(self) -> str:
        """The scope an Azure SDK asks for (`get_token(scope)`): the resource + `/.default`."""
        return self.resource.rstrip("/") + "/.default"


def _guid(rng: random.Random) -> str:
    n = (rng.getrandbits(128) & _UUID4_CLEAR) | _UUID4_SET
    h = f"{n:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def make_identities(
    seed: int, callers: Sequence[str], per_caller: int = IDENTITIES_PER_CALLER
) -> list[list[Identity]]:
    """`per_caller` identities for each caller, in caller order; the same seed gives the same
    client ids, and a caller's identities do not depend on which other callers exist.
    Resources go round `RESOURCES`, so a caller with 3 or more identities asks for each."""
    if per_caller < 1:
        raise ValueError("each caller needs at least one identity")
    out: list[list[Identity]] = []
    for caller in callers:
        rng = random.Random(f"{seed}:identity:{caller}")
        out.append(
            [
                Identity(caller, k, _guid(rng), RESOURCES[k % len(RESOURCES)])
                for k in range(per_caller)
            ]
        )
    return out
