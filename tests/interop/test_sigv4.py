"""AWS Signature V4 from real clients: botocore's signers (header and presigned URL) and
`curl --aws-sigv4`, against /sigv4/echo (region us-east-1, service execute-api, the HMAC
credential's key id as the access key id)."""

from __future__ import annotations

import shutil
import subprocess

import pytest
import requests
from botocore.auth import SigV4Auth, SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from conftest import HTTP_TIMEOUT, Server

REGION, SERVICE = "us-east-1", "execute-api"


def botocore_send(creds: dict, method: str, url: str, body: bytes | None = None,
                  headers: dict | None = None, region: str = REGION) -> requests.Response:
    """Signs with botocore's SigV4Auth and sends exactly what it signed with requests."""
    req = AWSRequest(method=method, url=url, data=body, headers=headers or {})
    SigV4Auth(Credentials(creds["key_id"], creds["secret"]), SERVICE, region).add_auth(req)
    p = req.prepare()
    return requests.request(p.method, p.url, headers=dict(p.headers), data=p.body, timeout=HTTP_TIMEOUT)


def test_botocore_signed_requests_are_accepted(server: Server) -> None:
    creds = server.cli_json("hmac", "create", "--name", "partner", "--scopes", "read:echo")
    base = server.base + "/sigv4/echo"
    for method, path, body in [
        ("GET", "/orders", None),
        # botocore signs the query as written, so it must be written canonically (`~`, not
        # `%7E`, which requests would send as `~` anyway): AWS itself refuses the same.
        ("GET", "/orders?b=2&a=x%20y&a=1&c=~&d=caf%C3%A9&e=%2F", None),
        ("POST", "/orders?amount=100", b'{"amount":100}'),
        ("PUT", "/a/b/c", b"x" * 5000),
        ("DELETE", "/orders/42?z=", None),
    ]:
        r = botocore_send(creds, method, base + path, body, {"Content-Type": "application/json"})
        assert r.status_code == 200, (method, path, r.text)
        echo = r.json()
        assert echo["headers"]["x-portcullis-scheme"] == "sigv4"
        assert echo["headers"]["x-portcullis-client"] == creds["key_id"]
        assert "authorization" not in echo["headers"], "the signature is not handed upstream"
        assert echo["body"]["bytes"] == len(body or b"")


def test_botocore_presigned_urls_are_accepted_once_and_until_they_expire(server: Server) -> None:
    creds = server.cli_json("hmac", "create", "--name", "partner", "--scopes", "read:echo")
    req = AWSRequest(method="GET", url=server.base + "/sigv4/echo/report?month=2026-11")
    SigV4QueryAuth(Credentials(creds["key_id"], creds["secret"]), SERVICE, REGION, expires=120).add_auth(req)
    url = req.prepare().url
    assert "X-Amz-Signature=" in url
    r = requests.get(url, timeout=HTTP_TIMEOUT)
    assert r.status_code == 200, r.text
    assert r.json()["headers"]["x-portcullis-client"] == creds["key_id"]
    again = requests.get(url, timeout=HTTP_TIMEOUT)
    assert again.status_code == 401 and again.json()["error"] == "replayed_request"
    tampered = url.replace("month=2026-11", "month=2026-12")
    r = requests.get(tampered, timeout=HTTP_TIMEOUT)
    assert r.status_code == 401 and r.json()["error"] == "invalid_signature"


def test_what_botocore_signs_for_another_scope_or_key_is_refused(server: Server) -> None:
    creds = server.cli_json("hmac", "create", "--name", "partner", "--scopes", "read:echo")
    url = server.base + "/sigv4/echo/orders"
    r = botocore_send(creds, "GET", url, region="eu-west-1")
    assert r.status_code == 401 and r.json()["error"] == "invalid_signature"
    r = botocore_send({"key_id": creds["key_id"], "secret": "wrong"}, "GET", url)
    assert r.status_code == 401 and r.json()["error"] == "invalid_signature"
    r = botocore_send({"key_id": "AKIDEXAMPLE", "secret": creds["secret"]}, "GET", url)
    assert r.status_code == 401 and r.json()["error"] == "unknown_key"
    # A replay of a botocore request, byte for byte.
    req = AWSRequest(method="POST", url=url, data=b'{"amount":1}')
    SigV4Auth(Credentials(creds["key_id"], creds["secret"]), SERVICE, REGION).add_auth(req)
    p = req.prepare()
    first = requests.post(p.url, headers=dict(p.headers), data=p.body, timeout=HTTP_TIMEOUT)
    assert first.status_code == 200, first.text
    second = requests.post(p.url, headers=dict(p.headers), data=p.body, timeout=HTTP_TIMEOUT)
    assert second.status_code == 401 and second.json()["error"] == "replayed_request"
    # The body changed after signing.
    req = AWSRequest(method="POST", url=url, data=b'{"amount":1}')
    SigV4Auth(Credentials(creds["key_id"], creds["secret"]), SERVICE, REGION).add_auth(req)
    p = req.prepare()
    r = requests.post(p.url, headers=dict(p.headers), data=b'{"amount":9}', timeout=HTTP_TIMEOUT)
    assert r.status_code == 401 and r.json()["error"] == "invalid_signature"
    # Revoked: refused from the next request on.
    server.cli_json("hmac", "revoke", creds["key_id"])
    r = botocore_send(creds, "GET", url + "?after=revoke")
    assert r.status_code == 401 and r.json()["error"] == "unknown_key"


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_curl_aws_sigv4_is_accepted(server: Server) -> None:
    creds = server.cli_json("hmac", "create", "--name", "partner", "--scopes", "read:echo")
    user = f"{creds['key_id']}:{creds['secret']}"
    for args in (
        [server.base + "/sigv4/echo/orders?a=1&b=two"],
        ["-X", "POST", "-H", "Content-Type: application/json", "--data-binary", '{"amount":100}',
         server.base + "/sigv4/echo/orders"],
    ):
        out = subprocess.run(
            ["curl", "-sS", "-w", "\n%{http_code}", "--aws-sigv4", f"aws:amz:{REGION}:{SERVICE}",
             "--user", user, *args],
            capture_output=True, text=True, timeout=30,
        )
        assert out.returncode == 0, out.stderr
        body, _, status = out.stdout.rpartition("\n")
        assert status == "200", body
        assert creds["key_id"] in body and '"x-portcullis-scheme":"sigv4"' in body
    # The same curl with a wrong secret.
    out = subprocess.run(
        ["curl", "-sS", "-w", "\n%{http_code}", "--aws-sigv4", f"aws:amz:{REGION}:{SERVICE}",
         "--user", f"{creds['key_id']}:wrong", server.base + "/sigv4/echo/orders"],
        capture_output=True, text=True, timeout=30,
    )
    body, _, status = out.stdout.rpartition("\n")
    assert status == "401" and '"invalid_signature"' in body
