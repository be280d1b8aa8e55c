//! The one-command quick start: an echo upstream that answers with the request it received
//! (method, path, headers) as JSON, the gateway in front of it on the embedded defaults, and the
//! user `alice` / `secret`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::json;
use tokio::net::TcpListener;
use zeroize::Zeroizing;

use crate::app;
use crate::auth::username::Username;
use crate::body::{self, Body};
use crate::config::Config;
use crate::store::NewUser;

/// Demo user name and password, printed in the instructions.
pub const DEMO_USER: &str = "alice";
pub const DEMO_PASSWORD: &str = "secret";

/// Starts the echo upstream on an ephemeral loopback port and returns its address.
pub async fn start_echo_upstream() -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let service = service_fn(|req| async move { Ok::<_, Infallible>(echo(req)) });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(addr)
}

/// What the upstream received, as JSON.
pub fn echo(req: Request<Incoming>) -> Response<Body> {
    let headers: Vec<(String, String)> = req
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let value = json!({
        "upstream": "gatehouse demo echo",
        "method": req.method().as_str(),
        "path": req.uri().path_and_query().map(|p| p.as_str()).unwrap_or("/"),
        "headers": headers,
    });
    let mut response = Response::new(body::full(
        serde_json::to_vec_pretty(&value).unwrap_or_default(),
    ));
    *response.status_mut() = StatusCode::OK;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}

/// The demo configuration: `/api` needs a token, `/public` does not, `/app` sends a browser
/// without a session to the sign-in page; all reach the echo.
pub fn demo_config(
    listen: SocketAddr,
    upstream: SocketAddr,
    data_dir: &Path,
) -> anyhow::Result<Config> {
    let text = format!(
        r#"
[server]
listen = "{listen}"

[auth]
keys_dir = {keys:?}

[auth.session]
enabled = true

[store]
path = {store:?}

[[routes]]
name = "api"
path_prefix = "/api"
upstream = "http://{upstream}"

[[routes]]
name = "app"
path_prefix = "/app"
upstream = "http://{upstream}"
login_redirect = true

[[routes]]
name = "public"
path_prefix = "/public"
upstream = "http://{upstream}"
auth = "public"
"#,
        keys = data_dir.join("keys").display().to_string(),
        store = data_dir.join("gatehouse.db").display().to_string(),
    );
    Config::from_toml(&text).context("demo configuration")
}

/// Runs the demo until Ctrl-C.
pub async fn run(listen: SocketAddr, data_dir: &Path) -> anyhow::Result<()> {
    let upstream = start_echo_upstream()
        .await
        .context("starting the echo upstream")?;
    let config = demo_config(listen, upstream, data_dir)?;
    let backlog = config.server.listen_backlog;
    let app = app::App::new(config, None).await?;
    seed_user(&app.current()).await?;
    let listener = crate::server::bind(listen, backlog)
        .with_context(|| format!("binding {listen} (pass --listen ADDR to use another address)"))?;
    let base = format!("http://{}", listener.local_addr()?);
    println!("{}", instructions(&base, upstream));
    app.serve(listener, app::shutdown_signal()).await?;
    Ok(())
}

async fn seed_user(gateway: &Arc<crate::gateway::Gateway>) -> anyhow::Result<()> {
    let auth = gateway.auth();
    let name = Username::parse(DEMO_USER)?;
    if auth.store().user(&name).await?.is_some() {
        return Ok(());
    }
    let hash = auth
        .hash_password(Zeroizing::new(DEMO_PASSWORD.to_owned()))
        .await?;
    auth.store()
        .create_user(NewUser {
            username: name,
            password_hash: hash,
            roles: vec!["user".into()],
            scopes: vec!["read".into(), "write".into()],
        })
        .await?;
    Ok(())
}

fn instructions(base: &str, upstream: SocketAddr) -> String {
    format!(
        r#"gatehouse demo is running.
  gateway          {base}
  echo upstream    http://{upstream}  (answers with the request it received)
  user             {DEMO_USER} / {DEMO_PASSWORD}  (roles: user; scopes: read write)

Try:
  # public route: no token needed; identity headers a client sends are removed
  curl -s {base}/public/hello -H 'X-User: mallory'

  # protected route without a token: 401
  curl -si {base}/api/items

  # log in (OAuth2 password grant), then call the API with the token
  TOKEN=$(curl -s -X POST {base}/auth/token -d 'grant_type=password&username={DEMO_USER}&password={DEMO_PASSWORD}' | sed -E 's/.*"access_token":"([^"]+)".*/\1/')
  curl -s {base}/api/items -H "Authorization: Bearer $TOKEN"

  # a browser: open {base}/app/ and you are sent to the sign-in page; sign in as
  # {DEMO_USER} and the page shows what the upstream received (the X-User headers, no cookie)

  # who am I, and the published keys
  curl -s {base}/auth/me -H "Authorization: Bearer $TOKEN"
  curl -s {base}/.well-known/jwks.json

Ctrl-C stops it."#
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_demo_configuration_validates_with_browser_sessions_on() {
        let dir = tempfile::tempdir().unwrap();
        let config = demo_config(
            "127.0.0.1:8080".parse().unwrap(),
            "127.0.0.1:9000".parse().unwrap(),
            dir.path(),
        )
        .unwrap();
        assert!(config.auth.session.enabled);
        assert!(config.routes.iter().any(|r| r.login_redirect));
    }
}
