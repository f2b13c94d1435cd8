#!/usr/bin/env python3
"""A webhook receiver that checks Keel's deliveries with the reference
Standard Webhooks library (the `standardwebhooks` package, pinned in
.ci/requirements.txt), so Keel's signatures are judged by code Keel
did not write.

Every POST is verified against each known `whsec_...` secret. A delivery
that verifies with at least one is answered 204 (or, under
`/status/<code>`, that code, so retries and 410 can be exercised); one that
does not is answered 400. Each request appends one JSON line to LOG:

    {"webhook_id": "...", "valid": true, "type": "order.paid",
     "verified_by": [0, 1], "path": "/hook", "error": null}

`verified_by` lists which secrets (in the order given) verified, so a
rotation, which signs with the old and the new secret, shows both.

Secrets come from `--secret` (repeatable), the KEEL_WEBHOOK_SECRETS
environment variable (whitespace-separated) and `--secrets-file` (one per
line, read again at each request, so a CI script can start the receiver,
register its URL with Keel and only then write the secret Keel returned).

    webhook-verifier.py LOG [--port 0] [--port-file FILE] [--secret whsec_...]
"""

import argparse
import json
import os
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from standardwebhooks.webhooks import Webhook, WebhookVerificationError

# One write at a time, so concurrent deliveries give whole lines.
LOG_LOCK = threading.Lock()


def parse_args(argv):
    parser = argparse.ArgumentParser(description="Verify Keel's webhooks with the reference library.")
    parser.add_argument("log", help="the file one JSON line per request is appended to")
    parser.add_argument("--host", default="127.0.0.1", help="the address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="the port to listen on (default: any free one)")
    parser.add_argument("--port-file", help="a file to write the chosen port to, once listening")
    parser.add_argument("--secret", action="append", default=[], help="a whsec_... secret (repeatable)")
    parser.add_argument("--secrets-file", help="a file of whsec_... secrets, one a line, read at each request")
    return parser.parse_args(argv)


def load_secrets(args):
    secrets = list(args.secret)
    secrets += os.environ.get("KEEL_WEBHOOK_SECRETS", "").split()
    if args.secrets_file and os.path.exists(args.secrets_file):
        with open(args.secrets_file, encoding="utf-8") as lines:
            secrets += [line.strip() for line in lines if line.strip()]
    return secrets


def check(secrets, body, headers):
    """Which secrets verify the delivery, its JSON body, and the last error."""
    verified_by, payload, error = [], None, None
    if not secrets:
        return verified_by, payload, "no secret to verify with"
    for index, secret in enumerate(secrets):
        try:
            payload = Webhook(secret).verify(body, headers)
            verified_by.append(index)
        except (WebhookVerificationError, ValueError, TypeError) as err:
            # ValueError: a malformed signature entry or body; TypeError: a
            # secret that is not base64.
            error = f"{type(err).__name__}: {err}"
    return verified_by, payload, error


class Handler(BaseHTTPRequestHandler):
    server_version = "KeelWebhookVerifier/1"

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        headers = {name: value for name, value in self.headers.items()}
        verified_by, payload, error = check(load_secrets(self.server.args), body, headers)
        valid = bool(verified_by)
        record = {
            "webhook_id": self.headers.get("webhook-id"),
            "valid": valid,
            "type": payload.get("type") if isinstance(payload, dict) else None,
            "verified_by": verified_by,
            "path": self.path,
            "error": None if valid else error,
        }
        with LOG_LOCK, open(self.server.args.log, "a", encoding="utf-8") as log:
            log.write(json.dumps(record) + "\n")
        self.send_response(status_for(self.path) if valid else 400)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format, *args):  # noqa: A002 (the base class's name)
        sys.stderr.write("webhook-verifier: " + (format % args) + "\n")


def status_for(path):
    """204, or the code a `/status/<code>` path asks for."""
    prefix = "/status/"
    if path.startswith(prefix):
        code = path[len(prefix):].split("?")[0].strip("/")
        if code.isdigit() and 200 <= int(code) <= 599:
            return int(code)
    return 204


def main(argv):
    args = parse_args(argv)
    server = ThreadingHTTPServer((args.host, args.port), Handler)
    server.args = args
    port = server.server_address[1]
    if args.port_file:
        with open(args.port_file, "w", encoding="utf-8") as out:
            out.write(f"{port}\n")
    print(f"webhook-verifier listening on {args.host}:{port}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
