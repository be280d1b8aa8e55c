"""Verifies a gatehouse access token with PyJWT, an independent JOSE implementation, using only
the JWKS the gateway publishes. Usage: verify_jwks.py JWKS_URL TOKEN ALG"""
import sys

import jwt

jwks_url, token, alg = sys.argv[1], sys.argv[2], sys.argv[3]
client = jwt.PyJWKClient(jwks_url)
key = client.get_signing_key_from_jwt(token)
header = jwt.get_unverified_header(token)
assert header["typ"] == "at+jwt", header
assert header["alg"] == alg, header
claims = jwt.decode(
    token,
    key.key,
    algorithms=[alg],
    audience="gatehouse",
    issuer="gatehouse",
    options={"require": ["exp", "iat", "nbf", "iss", "aud", "sub", "jti"]},
)
assert claims["sub"] == "alice", claims
print("verified", alg, header["kid"])
