"""Clients written for Kong's and Apache APISIX's `hmac-auth`, as their documentation writes
them (standard library only), against routes with `hmac_layout = "kong"` / `"apisix"` and a
credential imported with the partner's existing key id and secret; and the safeguards
Portcullis adds: method, path and date signed, the body's digest signed, replays refused."""

from __future__ import annotations

import base64
import hashlib
import hmac
from email.utils import formatdate
from pathlib import Path

import requests

from conftest import HTTP_TIMEOUT

CONFIG = """
[[routes]]
name = "kong"
path_prefix = "/kong"
upstream = "builtin:echo"
policy = "hmac"
hmac_layout = "kong"
scopes = ["read:echo"]

[[routes]]
name = "apisix"
path_prefix = "/apisix"
upstream = "builtin:echo"
policy = "hmac"
hmac_layout = "apisix"
scopes = ["read:echo"]

[[routes]]
name = "apisix_lax"
path_prefix = "/lax"
upstream = "builtin:echo"
policy = "hmac"
hmac_layout = "apisix"
hmac_unsigned_body = true
scopes = ["read:echo"]
"""

KEY_ID, SECRET = "alice123", "a-partner-secret-from-kong-0123456789"


def imported(server, tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text(SECRET + "\n")
    c = server.cli_json("hmac", "create", "--name", "alice", "--scopes", "read:echo",
                        "--key-id", KEY_ID, "--secret-file", str(secret))
    assert c["key_id"] == KEY_ID and "secret" not in c


def kong_headers(method: str, path: str, body: bytes = b"", sign_digest: bool = True) -> dict:
    """Kong's documented client: `date request-line` (and `digest`), HMAC-SHA256, base64."""
    date = formatdate(usegmt=True)
    names = ["date", "request-line"]
    lines = [f"date: {date}", f"{method} {path} HTTP/1.1"]
    headers = {"Date": date}
    if body:
        digest = "SHA-256=" + base64.b64encode(hashlib.sha256(body).digest()).decode()
        headers["Digest"] = digest
        if sign_digest:
            names.append("digest")
            lines.append(f"digest: {digest}")
    sig = base64.b64encode(hmac.new(SECRET.encode(), "\n".join(lines).encode(), hashlib.sha256).digest()).decode()
    headers["Authorization"] = (f'hmac username="{KEY_ID}", algorithm="hmac-sha256", '
                                f'headers="{" ".join(names)}", signature="{sig}"')
    return headers


def apisix_headers(method: str, path: str, body: bytes = b"", sign_digest: bool = True) -> dict:
    """APISIX's documented client: key id, `METHOD path`, `date: …`, each line ending in \\n."""
    date = formatdate(usegmt=True)
    names = ["@request-target", "date"]
    text = f"{KEY_ID}\n{method} {path}\ndate: {date}\n"
    headers = {"Date": date}
    if body:
        digest = "SHA-256=" + base64.b64encode(hashlib.sha256(body).digest()).decode()
        headers["Digest"] = digest
        if sign_digest:
            names.append("digest")
            text += f"digest: {digest}\n"
    sig = base64.b64encode(hmac.new(SECRET.encode(), text.encode(), hashlib.sha256).digest()).decode()
    headers["Authorization"] = (f'Signature keyId="{KEY_ID}",algorithm="hmac-sha256",'
                                f'headers="{" ".join(names)}",signature="{sig}"')
    return headers


def test_kong_and_apisix_clients_keep_working(start_server, tmp_path: Path) -> None:
    server = start_server(config=CONFIG)
    imported(server, tmp_path)
    for prefix, sign in (("/kong", kong_headers), ("/apisix", apisix_headers)):
        path = f"{prefix}/orders?b=2&a=1"
        r = requests.get(server.base + path, headers=sign("GET", path), timeout=HTTP_TIMEOUT)
        assert r.status_code == 200, (prefix, r.text)
        echo = r.json()
        assert echo["headers"]["x-portcullis-client"] == KEY_ID
        assert "authorization" not in echo["headers"]
        body = b'{"amount":100}'
        r = requests.post(server.base + path, data=body, headers=sign("POST", path, body), timeout=HTTP_TIMEOUT)
        assert r.status_code == 200, (prefix, r.text)
        assert r.json()["body"]["bytes"] == len(body)


def test_the_safeguards_refuse_what_the_plugins_would_take(start_server, tmp_path: Path) -> None:
    server = start_server(config=CONFIG)
    imported(server, tmp_path)
    body = b'{"amount":100}'
    for prefix, sign in (("/kong", kong_headers), ("/apisix", apisix_headers)):
        path = f"{prefix}/pay?amount=100"
        # The same request twice: the second is a replay.
        h = sign("POST", path, body)
        assert requests.post(server.base + path, data=body, headers=h, timeout=HTTP_TIMEOUT).status_code == 200
        again = requests.post(server.base + path, data=body, headers=h, timeout=HTTP_TIMEOUT)
        assert again.status_code == 401 and again.json()["error"] == "replayed_request", again.text
        # Another amount in the query, another body with its own (unsigned) digest.
        h = sign("POST", path, body)
        r = requests.post(server.base + f"{prefix}/pay?amount=999", data=body, headers=h, timeout=HTTP_TIMEOUT)
        assert r.status_code == 401 and r.json()["error"] == "invalid_signature", r.text
        h = sign("POST", path, body, sign_digest=False)
        other = b'{"amount":999}'
        h["Digest"] = "SHA-256=" + base64.b64encode(hashlib.sha256(other).digest()).decode()
        r = requests.post(server.base + path, data=other, headers=h, timeout=HTTP_TIMEOUT)
        assert r.status_code == 401 and r.json()["error"] == "invalid_signature", r.text
        # Without the date signed (Kong and APISIX would accept any Date header).
        h = sign("GET", path)
        auth = h["Authorization"]
        h["Authorization"] = auth.replace('headers="date request-line"', 'headers="request-line"') \
            .replace('headers="@request-target date"', 'headers="@request-target"')
        r = requests.get(server.base + path, headers=h, timeout=HTTP_TIMEOUT)
        assert r.status_code == 401 and r.json()["error"] == "invalid_signature", r.text
    # A route that opts in takes APISIX's documented body validation (`Digest` unsigned).
    path = "/lax/pay"
    h = apisix_headers("POST", path, body, sign_digest=False)
    r = requests.post(server.base + path, data=body, headers=h, timeout=HTTP_TIMEOUT)
    assert r.status_code == 200, r.text
    r = requests.post(server.base + path, data=b"tampered", headers=apisix_headers("POST", path, body, False),
                      timeout=HTTP_TIMEOUT)
    assert r.status_code == 400 and r.json()["error"] == "body_hash_mismatch", r.text


def test_portcullis_request_signs_both_formats(start_server, tmp_path: Path) -> None:
    import subprocess

    from conftest import clean_env

    server = start_server(config=CONFIG)
    imported(server, tmp_path)
    env = clean_env(PORTCULLIS_HMAC_SECRET=SECRET)
    for scheme, prefix in (("kong", "/kong"), ("apisix", "/apisix")):
        for args in ([], ["-d", '{"amount":1}']):
            method = "POST" if args else "GET"
            r = subprocess.run([server.bin, "request", "--scheme", scheme, "--key-id", KEY_ID, *args,
                                method, f"{server.base}{prefix}/orders?a=1"],
                               env=env, capture_output=True, text=True, timeout=30)
            assert r.returncode == 0, (scheme, method, r.stdout, r.stderr)
            assert KEY_ID in r.stdout
