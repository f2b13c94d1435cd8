"""Schemathesis hooks for .ci/fuzz-gateway: sign in as the fuzzing user.

The fuzzer calls every operation, logout and session revocation included, so
a token fixed at the start stops working part way through and every later
case would only see 401. This provider signs in again whenever a call
answered 401 (schemathesis then drops the cached token).

It signs in from its own loopback address (KEEL_FUZZ_SOURCE, e.g. 127.0.0.2):
the fuzzer's own failed logins come from 127.0.0.1, and Keel throttles
sign-ins per address, so they must not count against this one.
"""

import http.client
import json
import os
from urllib.parse import urlsplit

import schemathesis

BASE = urlsplit(os.environ["KEEL_FUZZ_BASE"])
EMAIL = os.environ["KEEL_FUZZ_EMAIL"]
PASSWORD = os.environ["KEEL_FUZZ_PASSWORD"]
SOURCE = os.environ.get("KEEL_FUZZ_SOURCE", "127.0.0.1")


def sign_in() -> str:
    connection = http.client.HTTPConnection(BASE.hostname, BASE.port, timeout=30, source_address=(SOURCE, 0))
    try:
        body = json.dumps({"email": EMAIL, "password": PASSWORD})
        connection.request("POST", "/v1/auth:login", body, {"content-type": "application/json"})
        response = connection.getresponse()
        text = response.read()
        if response.status != 200:
            raise RuntimeError(f"signing in as {EMAIL} answered {response.status}: {text!r}")
        return json.loads(text)["tokens"]["accessToken"]
    finally:
        connection.close()


def anonymous(ctx) -> bool:
    """Operations that take no token: a 401 there says nothing about ours."""
    return ctx.operation.definition.raw.get("security") == []


@schemathesis.auth(refresh_interval=600).skip_for(anonymous)
class KeelSignIn:
    def get(self, case, ctx):
        return sign_in()

    def set(self, case, data, ctx):
        case.headers = case.headers or {}
        case.headers["Authorization"] = f"Bearer {data}"
