"""A client of a FastAPI app written as the FastAPI security tutorial's client is: the OAuth2
password flow with `requests`, a form of `username` and `password` only (no grant_type, no
client_id) POSTed to /token, then GET /users/me and an API path with the Bearer token.
Usage: fastapi_client.py BASE_URL USERNAME PASSWORD"""
import sys

import requests

base, username, password = sys.argv[1], sys.argv[2], sys.argv[3]
session = requests.Session()
session.trust_env = False  # loopback only: no proxy from the environment

response = session.post(
    f"{base}/token", data={"username": username, "password": password}, timeout=10
)
assert response.status_code == 200, (response.status_code, response.text)
body = response.json()
assert body["token_type"].lower() == "bearer", body
token = body["access_token"]
headers = {"Authorization": f"Bearer {token}"}

me = session.get(f"{base}/users/me", headers=headers, timeout=10)
assert me.status_code == 200, (me.status_code, me.text)
assert me.json()["sub"] == username, me.json()

items = session.get(f"{base}/items/", headers=headers, timeout=10)
assert items.status_code == 200, (items.status_code, items.text)

wrong = session.post(
    f"{base}/token", data={"username": username, "password": "wrong"}, timeout=10
)
assert wrong.status_code in (400, 401), (wrong.status_code, wrong.text)
print("ok")
