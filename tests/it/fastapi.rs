//! Moving a FastAPI auth behind the gateway: `[auth.paths]` puts the endpoints where the
//! FastAPI app had them, and `/token` takes the form FastAPI's `OAuth2PasswordRequestForm` takes
//! (no `grant_type`, an empty `client_id`). The client side is an independent one: a Python
//! script using `requests` as the FastAPI tutorial's client does.

use std::time::Duration;

use reqwest::StatusCode;

use crate::support::{GatewayBuilder, TestGateway, Upstream, claims, client, route};

/// The tutorial's layout: the app at `/`, its `/token` and `/users/me` taken by the gateway.
const FASTAPI_PATHS: &str = "[auth]\n[auth.paths]\ntoken = \"/token\"\nme = \"/users/me\"\n";

async fn fastapi_gateway(up: &Upstream) -> TestGateway {
    let gw = GatewayBuilder::route("app", "/", &up.url(), "")
        .and(FASTAPI_PATHS)
        .start()
        .await;
    gw.add_user("johndoe", "secret-password", &["user"], &["items:read"])
        .await;
    gw
}

async fn post_form(gw: &TestGateway, path: &str, body: &str) -> (StatusCode, serde_json::Value) {
    let response = client()
        .post(gw.url(path))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body.to_owned())
        .send()
        .await
        .unwrap();
    let status = response.status();
    (status, response.json().await.unwrap_or_default())
}

/// The Python interpreter with `requests` (set by `.ci/run`). Outside CI the check is skipped
/// with a notice; in CI (`CI` set) a missing interpreter fails the test.
fn python() -> Option<String> {
    match std::env::var("INTEROP_PYTHON") {
        Ok(p) => Some(p),
        Err(_) if std::env::var_os("CI").is_some() => panic!("INTEROP_PYTHON must be set in CI"),
        Err(_) => {
            eprintln!("skipping: set INTEROP_PYTHON to a python with requests (see .ci/run)");
            None
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fastapi_tutorial_client_logs_in_unchanged() {
    let Some(python) = python() else { return };
    let up = Upstream::start().await;
    let gw = fastapi_gateway(&up).await;
    let script = format!(
        "{}/tests/python/fastapi_client.py",
        env!("CARGO_MANIFEST_DIR")
    );
    let base = gw.url("");
    let mut child = std::process::Command::new(python)
        .args([script.as_str(), base.as_str(), "johndoe", "secret-password"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start the python client");
    // Bounded: killed (by its PID, it is our child) when it has not finished in 60 s.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if tokio::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the python client took over 60 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "fastapi_client.py failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Only the API call reached the app: /token and /users/me were the gateway's.
    let seen = up.seen();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].target, "/items/");
}

#[tokio::test]
async fn the_old_token_path_is_not_a_hidden_second_path_once_token_is_moved() {
    let up = Upstream::start().await;
    let gw = fastapi_gateway(&up).await;
    let form = "username=johndoe&password=secret-password";
    let (status, body) = post_form(&gw, "/token", form).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    for old in ["/auth/token", "/auth/me"] {
        let (status, body) = post_form(&gw, old, form).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{old}: {body}");
        assert!(body.get("access_token").is_none(), "{old}: {body}");
    }
    // The endpoints not moved stay under the prefix.
    let (status, body) = post_form(&gw, "/auth/login", form).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // The prefix's catch-all is the gateway's, never the app's behind `/`.
    up.assert_untouched();
}

#[tokio::test]
async fn a_token_request_without_grant_type_is_the_password_grant_only_with_credentials() {
    let up = Upstream::start().await;
    let gw = fastapi_gateway(&up).await;
    for form in [
        "username=johndoe&password=secret-password",
        "grant_type=&username=johndoe&password=secret-password",
    ] {
        let (status, body) = post_form(&gw, "/token", form).await;
        assert_eq!(status, StatusCode::OK, "{form}: {body}");
        assert_eq!(
            claims(body["access_token"].as_str().unwrap())["sub"],
            "johndoe"
        );
    }
    // A wrong password without grant_type is a failed password grant, not something else.
    let (status, body) = post_form(&gw, "/token", "username=johndoe&password=nope").await;
    assert_eq!(body["error"], "invalid_grant", "{status} {body}");
    // Other grants are never guessed: a refresh token alone, a username alone, nothing.
    let (_, tokens) = post_form(&gw, "/token", "username=johndoe&password=secret-password").await;
    let refresh = tokens["refresh_token"].as_str().unwrap().to_owned();
    let refresh_form = format!("refresh_token={refresh}");
    for form in [
        refresh_form.as_str(),
        "username=johndoe",
        "password=secret-password",
        "scope=x",
    ] {
        let (status, body) = post_form(&gw, "/token", form).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{form}: {body}");
        assert_eq!(body["error"], "invalid_request", "{form}: {body}");
    }
    let (_, body) = post_form(
        &gw,
        "/token",
        "grant_type=client_secret&username=johndoe&password=secret-password",
    )
    .await;
    assert_eq!(body["error"], "unsupported_grant_type", "{body}");
    up.assert_untouched();
}

#[tokio::test]
async fn an_empty_client_id_from_swagger_ui_names_no_client() {
    let up = Upstream::start().await;
    let gw = fastapi_gateway(&up).await;
    // What Swagger UI's "Authorize" sends for the password flow with nothing filled in.
    let (status, body) = post_form(
        &gw,
        "/token",
        "grant_type=password&username=johndoe&password=secret-password&scope=&client_id=&client_secret=",
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let c = claims(body["access_token"].as_str().unwrap());
    let (_, without) = post_form(&gw, "/token", "username=johndoe&password=secret-password").await;
    let named = claims(without["access_token"].as_str().unwrap());
    assert_eq!(c["client_id"], named["client_id"], "{c}");
    assert_ne!(c["client_id"], "", "{c}");
    // An empty scope= is no scope asked for: the user's scopes, not none.
    assert_eq!(body["scope"], "items:read", "{body}");
}

#[tokio::test]
async fn a_root_prefix_serves_the_endpoints_at_the_root_and_every_other_path_to_the_routes() {
    let up = Upstream::start().await;
    let gw = GatewayBuilder::route("app", "/", &up.url(), "")
        .and("[auth]\nprefix = \"/\"\n")
        .start()
        .await;
    gw.add_user("johndoe", "secret-password", &[], &[]).await;
    let (status, body) =
        post_form(&gw, "/token", "username=johndoe&password=secret-password").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let token = body["access_token"].as_str().unwrap().to_owned();
    let me = client()
        .get(gw.url("/me"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(me.status(), StatusCode::OK);
    up.assert_untouched();
    // No catch-all at the root: what is not an endpoint's exact path is the app's.
    for path in ["/auth/token", "/token/x", "/nothing"] {
        let response = client()
            .get(gw.url(path))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{path}");
    }
    let targets: Vec<String> = up.seen().into_iter().map(|s| s.target).collect();
    assert_eq!(targets, ["/auth/token", "/token/x", "/nothing"]);
}

#[tokio::test]
async fn the_login_redirect_and_the_sign_in_form_use_the_configured_sign_in_path() {
    let up = Upstream::start().await;
    let gw = GatewayBuilder::new(&route("app", "/app", &up.url(), "login_redirect = true"))
        .and("[auth]\n[auth.paths]\nsign_in = \"/signin\"\nsign_out = \"/bye\"\n[auth.session]\nenabled = true\n")
        .start()
        .await;
    let redirect = client()
        .get(gw.url("/app/page"))
        .header("accept", "text/html")
        .send()
        .await
        .unwrap();
    let location = redirect.headers()["location"].to_str().unwrap().to_owned();
    assert!(location.starts_with("/signin?return_to="), "{location}");
    let page = client().get(gw.url("/signin")).send().await.unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    assert!(page.text().await.unwrap().contains("action=\"/signin\""));
    let page = client().get(gw.url("/bye")).send().await.unwrap();
    assert!(page.text().await.unwrap().contains("action=\"/bye\""));
    let old = client().get(gw.url("/auth/sign_in")).send().await.unwrap();
    assert_eq!(old.status(), StatusCode::NOT_FOUND);
}

#[test]
fn routes_explain_names_the_endpoint_at_its_configured_path_and_the_route_it_wins_over() {
    let config = gatehouse::config::Config::from_toml(&format!(
        "{}{FASTAPI_PATHS}",
        route("app", "/", "http://127.0.0.1:9", "")
    ))
    .unwrap();
    let explain = |method, url| gatehouse::cli::explain(&config, method, url).unwrap();
    let text = explain("POST", "http://x.test/token");
    assert!(
        text.contains("gatehouse's own token at /token (auth.paths.token)"),
        "{text}"
    );
    assert!(text.contains("over     route app"), "{text}");
    let text = explain("GET", "http://x.test/users/me");
    assert!(text.contains("own me at /users/me"), "{text}");
    let text = explain("POST", "http://x.test/auth/token");
    assert!(
        text.contains("none at /auth/token") && text.contains("404"),
        "{text}"
    );
    let text = explain("GET", "http://x.test/users/other");
    assert!(text.contains("app"), "{text}");
    assert!(!text.contains("endpoint"), "{text}");
    let summary = gatehouse::cli::summary(&config);
    assert!(
        summary.contains("token=/token") && summary.contains("me=/users/me"),
        "{summary}"
    );
    assert!(summary.contains("login=/auth/login"), "{summary}");
}

const RECIPE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/examples/fastapi/gatehouse.toml"
);

/// The README's FastAPI recipe, as written: Swagger UI at `/docs` is useless unless the schema
/// it fetches, `/openapi.json`, is public too; the rest of the app still needs a token.
#[tokio::test]
async fn the_readme_fastapi_recipe_serves_public_docs_with_their_schema() {
    let up = Upstream::start().await;
    let recipe = std::fs::read_to_string(RECIPE).unwrap();
    assert!(recipe.contains("http://127.0.0.1:8000"));
    let gw = GatewayBuilder::new(&recipe.replace("http://127.0.0.1:8000", &up.url()))
        .start()
        .await;
    for path in ["/docs", "/docs/oauth2-redirect", "/openapi.json"] {
        let status = client().get(gw.url(path)).send().await.unwrap().status();
        assert_eq!(status, StatusCode::OK, "{path}");
    }
    let status = client()
        .get(gw.url("/items/"))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let targets: Vec<String> = up.seen().into_iter().map(|s| s.target).collect();
    assert_eq!(
        targets,
        ["/docs", "/docs/oauth2-redirect", "/openapi.json"],
        "only the public paths reached the app"
    );

    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    assert!(
        readme.contains(&recipe),
        "README.md must include examples/fastapi/gatehouse.toml verbatim"
    );
}
