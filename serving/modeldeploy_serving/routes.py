"""Which protocol and endpoint a request path belongs to, for the metrics' bounded labels."""

import re

_ROUTES: tuple[tuple[re.Pattern[str], str, str], ...] = tuple(
    (re.compile(pattern), protocol, endpoint)
    for pattern, protocol, endpoint in (
        (r"/v2/?", "v2", "server_metadata"),
        (r"/v2/health/(live|ready)", "v2", "health"),
        (r"/v2/models/[^/]+(/versions/[^/]+)?/ready", "v2", "health"),
        (r"/v2/models/[^/]+(/versions/[^/]+)?/infer", "v2", "infer"),
        (r"/v2/models/[^/]+(/versions/[^/]+)?", "v2", "metadata"),
        (r"/v1/models/?", "v1", "models"),
        (r"/v1/models/[^/]+:predict", "v1", "predict"),
        (r"/v1/models/[^/:]+", "v1", "metadata"),
    )
)


def classify_path(path: str) -> tuple[str, str] | None:
    """The (protocol, endpoint) of a protocol path; None for anything else (/metrics, docs, typos)."""
    for pattern, protocol, endpoint in _ROUTES:
        if pattern.fullmatch(path):
            return protocol, endpoint
    return None
