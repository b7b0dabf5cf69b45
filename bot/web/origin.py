"""Where a browser says a request comes from: the CSRF defence of requests made before any session."""

from __future__ import annotations

from urllib.parse import urlsplit

from starlette.requests import Request

from bot.config import Settings


def origin_matches(request: Request, settings: Settings) -> bool | None:
    """Return whether the request's Origin (else Referer) is this site; None when it names none.

    This site is the public URL's scheme and host, or the Host the request was sent to (a page served
    on a loopback address while the public URL names the proxy). An opaque origin ("null") never matches.
    """
    origin = request.headers.get("origin")
    if origin is None:
        origin = request.headers.get("referer")
    if not origin:
        return None
    if origin == "null":
        return False
    claimed = urlsplit(origin)
    if claimed.scheme not in ("http", "https") or not claimed.netloc:
        return False
    public = urlsplit(settings.public_url)
    if (claimed.scheme, claimed.netloc.lower()) == (public.scheme.lower(), public.netloc.lower()):
        return True
    return claimed.netloc.lower() == request.headers.get("host", "").lower()
