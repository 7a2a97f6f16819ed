"""Signs N requests for scripts/bench-hmac.sh (standard library only), one per line for
bench/signed.lua: METHOD, path, then header name/value pairs, tab-separated.

    python3 bench/sign_requests.py SCHEME N HOST:PORT KEY_ID SECRET [BODY_FILE] > signed.txt

SCHEME: hmac (native), sigv4 (us-east-1 / execute-api) or httpsig (RFC 9421 hmac-sha256).
Every request is distinct (a nonce, or for SigV4 a query parameter), so each opens the route
once."""

import base64
import hashlib
import hmac
import secrets
import sys
import time

scheme, n, host, key_id, secret = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
body = open(sys.argv[6], "rb").read() if len(sys.argv) > 6 and sys.argv[6] else b""
method = "POST" if body else "GET"
body_hash = hashlib.sha256(body).hexdigest()
now = int(time.time())
out = sys.stdout
key = secret.encode()

if scheme == "hmac":
    path = "/hmac/orders"
    for i in range(n):
        nonce = f"bench{i:012d}{secrets.token_hex(4)}"
        text = f"{method}\n{path}\n\n{now}\n{nonce}\n{body_hash}"
        sig = hmac.new(key, text.encode(), hashlib.sha256).hexdigest()
        out.write(f"{method}\t{path}\tX-API-Key\t{key_id}\tX-Timestamp\t{now}\tX-Nonce\t{nonce}\tX-Signature\t{sig}\n")
elif scheme == "sigv4":
    amz = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
    date = amz[:8]
    k = hmac.new(b"AWS4" + key, date.encode(), hashlib.sha256).digest()
    for part in ("us-east-1", "execute-api", "aws4_request"):
        k = hmac.new(k, part.encode(), hashlib.sha256).digest()
    scope = f"{date}/us-east-1/execute-api/aws4_request"
    for i in range(n):
        path, query = "/sigv4/orders", f"i={i}"
        creq = (f"{method}\n{path}\n{query}\nhost:{host}\nx-amz-content-sha256:{body_hash}\nx-amz-date:{amz}\n\n"
                f"host;x-amz-content-sha256;x-amz-date\n{body_hash}")
        sts = f"AWS4-HMAC-SHA256\n{amz}\n{scope}\n{hashlib.sha256(creq.encode()).hexdigest()}"
        sig = hmac.new(k, sts.encode(), hashlib.sha256).hexdigest()
        auth = (f"AWS4-HMAC-SHA256 Credential={key_id}/{scope}, "
                f"SignedHeaders=host;x-amz-content-sha256;x-amz-date, Signature={sig}")
        out.write(f"{method}\t{path}?{query}\tX-Amz-Date\t{amz}\tX-Amz-Content-Sha256\t{body_hash}\tAuthorization\t{auth}\n")
elif scheme == "httpsig":
    path = "/httpsig/orders"
    digest = "sha-256=:" + base64.b64encode(hashlib.sha256(body).digest()).decode() + ":"
    covered = '"@method" "@target-uri" "content-digest"' if body else '"@method" "@target-uri"'
    for i in range(n):
        nonce = f"bench{i:012d}{secrets.token_hex(4)}"
        params = f'({covered});created={now};keyid="{key_id}";nonce="{nonce}";alg="hmac-sha256"'
        base_lines = [f'"@method": {method}', f'"@target-uri": http://{host}{path}']
        if body:
            base_lines.append(f'"content-digest": {digest}')
        base_lines.append(f'"@signature-params": {params}')
        sig = base64.b64encode(hmac.new(key, "\n".join(base_lines).encode(), hashlib.sha256).digest()).decode()
        extra = f"\tContent-Digest\t{digest}" if body else ""
        out.write(f"{method}\t{path}\tSignature-Input\tsig1={params}\tSignature\tsig1=:{sig}:{extra}\n")
else:
    sys.exit(f"unknown scheme {scheme}")
