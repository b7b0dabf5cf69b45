"""The baseline for bench_inbound: a bare FastAPI endpoint that parses a Twilio form and answers empty TwiML.

No signature check, no database, no workers: what the web stack alone costs. It runs under uvicorn
with the same options `clinicbot serve` uses (uvloop and httptools when installed, access log off):

    .venv/bin/python bench/bare_app.py --port 8099
"""

from __future__ import annotations

import argparse
import sys

from fastapi import FastAPI, Request, Response

EMPTY_TWIML = '<?xml version="1.0" encoding="UTF-8"?><Response></Response>'

app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)


@app.post("/sms")
async def sms(request: Request) -> Response:
    """Parse the form as the real webhook does, touch the fields it reads, answer empty TwiML."""
    form = await request.form()
    fields: dict[str, list[str]] = {}
    for name, value in form.multi_items():
        if isinstance(value, str):
            fields.setdefault(name, []).append(value)
    if not fields.get("MessageSid") or not fields.get("From") or "Body" not in fields:
        return Response(status_code=400)
    return Response(content=EMPTY_TWIML, media_type="text/xml")


@app.get("/healthz")
def healthz() -> Response:
    """Answer once the server is up (the benchmark waits for it)."""
    return Response(content="ok", media_type="text/plain")


def main() -> int:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8099)
    args = parser.parse_args()
    # The same call as `clinicbot serve` (bot/cli.py), so the comparison is like for like.
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
