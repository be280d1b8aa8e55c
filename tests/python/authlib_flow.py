"""Runs the OAuth2 resource-owner password flow and the refresh flow with authlib's requests
client, unchanged, against a running gatehouse. Usage: authlib_flow.py BASE_URL"""
import sys

from authlib.integrations.requests_client import OAuth2Session

base = sys.argv[1]
session = OAuth2Session(client_id="authlib-test", token_endpoint=base + "/auth/token")
token = session.fetch_token(base + "/auth/token", username="alice", password="secret")
assert token["token_type"].lower() == "bearer", token
assert "refresh_token" in token, token

me = session.get(base + "/auth/me")
assert me.status_code == 200, (me.status_code, me.text)
assert me.json()["sub"] == "alice", me.text
assert me.json()["client_id"] == "authlib-test", me.text

old_refresh = token["refresh_token"]
new = session.refresh_token(base + "/auth/token", refresh_token=old_refresh)
assert new["refresh_token"] != old_refresh, new
assert session.get(base + "/auth/me").status_code == 200

# The used refresh token is refused: rotation works through the library too.
try:
    session.refresh_token(base + "/auth/token", refresh_token=old_refresh)
except Exception as e:  # authlib raises OAuthError for error responses
    assert "invalid_grant" in str(e), e
else:
    raise AssertionError("a used refresh token was accepted")
print("authlib flow ok")
