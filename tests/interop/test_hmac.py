"""The README's HMAC client (Python standard library only), run as written against the real
server: signed requests open /hmac/echo, the canonical query agrees with the gateway's on
awkward queries, and the gateway refuses what it must."""

from __future__ import annotations

import hashlib
import hmac
import re
import subprocess
import sys
import time
from pathlib import Path

from conftest import Server, clean_env

README = Path(__file__).resolve().parents[2] / "README.md"


def readme_client(tmp_path: Path) -> Path:
    """The Python block of README's "HMAC request signing" section, saved as sign.py."""
    text = README.read_text()
    section = text.split("## HMAC request signing", 1)[1].split("\n## ", 1)[0]
    m = re.search(r"```python\n(.*?)```", section, re.S)
    assert m, "README: no Python client in HMAC request signing"
    path = tmp_path / "sign.py"
    path.write_text(m.group(1))
    return path


def run_client(script: Path, creds: dict, method: str, url: str, body: str | None = None) -> tuple[int, str]:
    env = clean_env(KEY_ID=creds["key_id"], SECRET=creds["secret"])
    args = [sys.executable, str(script), method, url] + ([body] if body is not None else [])
    r = subprocess.run(args, env=env, capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    status, _, rest = r.stdout.partition(" ")
    return int(status), rest


def test_the_readme_client_signs_requests_the_gateway_accepts(server: Server, tmp_path: Path) -> None:
    creds = server.cli_json("hmac", "create", "--name", "partner", "--scopes", "read:echo")
    assert creds["key_id"].startswith("hk_") and creds["secret"].startswith("hs_")
    script = readme_client(tmp_path)
    base = server.base + "/hmac/echo/orders"
    for method, query, body in [
        ("POST", "?a=1", '{"amount":100}'),
        ("GET", "", None),
        ("PUT", "?b=2&a=x%20y&a=1&c=%7e&d=caf%C3%A9&flag&e=1+2", "x" * 5000),
        ("DELETE", "?z=&y=%2F%3F", None),
    ]:
        status, answer = run_client(script, creds, method, base + query, body)
        assert status == 200, f"{method} {query}: {answer}"
        assert creds["key_id"] in answer

    # A credential that does not exist, and one that was revoked.
    status, answer = run_client(script, {"key_id": "hk_nobody", "secret": "x"}, "GET", base)
    assert status == 401 and '"unknown_key"' in answer
    server.cli_json("hmac", "revoke", creds["key_id"])
    status, answer = run_client(script, creds, "GET", base)
    assert status == 401 and '"unknown_key"' in answer


def test_replays_and_tampering_are_refused(server: Server) -> None:
    creds = server.cli_json("hmac", "create", "--name", "partner", "--scopes", "read:echo")
    body = b'{"amount":100}'
    ts, nonce = str(int(time.time())), "py_nonce_0123456789"
    text = "\n".join(["POST", "/hmac/echo/pay", "amount=100", ts, nonce, hashlib.sha256(body).hexdigest()])
    sig = hmac.new(creds["secret"].encode(), text.encode(), hashlib.sha256).hexdigest()
    headers = {"X-API-Key": creds["key_id"], "X-Timestamp": ts, "X-Nonce": nonce, "X-Signature": sig}
    assert server.request("POST", "/hmac/echo/pay?amount=100", data=body, headers=headers).status_code == 200
    again = server.request("POST", "/hmac/echo/pay?amount=100", data=body, headers=headers)
    assert again.status_code == 401 and again.json()["error"] == "replayed_request"
    fresh = dict(headers, **{"X-Nonce": "py_nonce_0123456790"})
    for path, data in [("/hmac/echo/pay?amount=100000", body), ("/hmac/echo/pay?amount=100", b'{"amount":1}')]:
        r = server.request("POST", path, data=data, headers=fresh)
        assert r.status_code == 401 and r.json()["error"] == "invalid_signature", (path, r.text)
    old = dict(headers, **{"X-Timestamp": str(int(time.time()) - 3600), "X-Nonce": "py_nonce_old_000001"})
    r = server.request("POST", "/hmac/echo/pay?amount=100", data=body, headers=old)
    assert r.status_code == 401 and r.json()["error"] == "signature_expired"
    assert abs(int(r.headers["X-Server-Time"]) - time.time()) < 60
