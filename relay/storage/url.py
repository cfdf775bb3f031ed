"""The relay's own parameters in a PostgreSQL storage URL, read without loading a driver.

`?schema=NAME` keeps the relay's tables in a schema of their own (created if missing);
`?pooler=pgbouncer` says a pooler in transaction mode sits in front of PostgreSQL. Both are
taken out before the URL reaches asyncpg, which would send them to the server as settings.
"""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

POOLERS = ("pgbouncer",)
_OWN_PARAMETERS = ("schema", "pooler")  # the relay's, taken out before asyncpg sees the URL


def relay_parameters(url: str) -> tuple[str, str | None, str | None]:
    """The URL without the relay's own parameters, and their values: `schema` and `pooler`.

    `?pooler=pgbouncer`: a pooler in transaction mode sits between the relay and PostgreSQL,
    so a session keeps no state from one transaction to the next: no prepared statements are
    kept (asyncpg's statement cache is off) and no schema can be set for the session.
    """
    parts = urlsplit(url)
    query = parse_qsl(parts.query)
    found = {key: value for key, value in query if key in _OWN_PARAMETERS}
    rest = urlencode([(key, value) for key, value in query if key not in _OWN_PARAMETERS])
    return urlunsplit(parts._replace(query=rest)), found.get("schema"), found.get("pooler")


def parameter_problem(url: str) -> str | None:
    """Why the relay's own parameters of `url` cannot be used, or None."""
    _, schema, pooler = relay_parameters(url)
    if schema is not None and not schema.replace("_", "").isalnum():
        return f"invalid schema name: {schema!r}"
    if pooler is not None and pooler not in POOLERS:
        return f"unknown pooler {pooler!r} (known: {', '.join(POOLERS)})"
    if pooler is not None and schema is not None:
        return (
            "?schema= needs a session setting, which a pooler in transaction mode does not"
            " keep: give the relay a database of its own"
        )
    return None
