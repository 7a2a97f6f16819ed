"""PyJWT's cost to verify one token per algorithm, with the same checks as the criterion
bench `portcullis-core --bench jwt` (signature, iss, aud, exp, nbf): for BENCHMARKS.md.

    target/interop-venv/bin/python bench/pyjwt_verify.py
"""

import time
import timeit

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

ISS, AUD = "https://issuer.example", "https://api.example"
now = int(time.time())
claims = {"iss": ISS, "sub": "svc", "aud": AUD, "exp": now + 3600, "iat": now, "nbf": now,
          "jti": "j1", "client_id": "svc", "scope": "read:echo"}
keys = {
    "HS256": (b"\x07" * 32, b"\x07" * 32),
    "RS256": (k := rsa.generate_private_key(public_exponent=65537, key_size=2048), k.public_key()),
    "ES256": (k := ec.generate_private_key(ec.SECP256R1()), k.public_key()),
    "EdDSA": (k := ed25519.Ed25519PrivateKey.generate(), k.public_key()),
}
print("| alg | PyJWT µs/verify |")
print("|---|---:|")
for alg, (private, public) in keys.items():
    token = jwt.encode(claims, private, algorithm=alg)
    def verify():
        jwt.decode(token, public, algorithms=[alg], audience=AUD, issuer=ISS)
    n = 2000
    best = min(timeit.repeat(verify, number=n, repeat=5)) / n
    print(f"| {alg} | {best * 1e6:.1f} |")
