//! TLS on both sides, with certificates generated in the test.

use std::convert::Infallible;
use std::sync::Arc;

use http::StatusCode;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

use crate::support::{GatewayBuilder, Upstream};

/// A self-signed certificate for 127.0.0.1 and localhost (also used by `redirects`).
pub struct Pki {
    pub cert_pem: String,
    pub key_pem: String,
}

pub fn pki() -> Pki {
    let certified =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()]).unwrap();
    Pki {
        cert_pem: certified.cert.pem(),
        key_pem: certified.signing_key.serialize_pem(),
    }
}

fn tls_client(ca_pem: &str, http1_only: bool) -> reqwest::Client {
    let mut b = reqwest::Client::builder()
        .no_proxy()
        .tls_certs_only([reqwest::Certificate::from_pem(ca_pem.as_bytes()).unwrap()]);
    if http1_only {
        b = b.http1_only();
    }
    b.build().unwrap()
}

/// A plain-HTTP request to the HTTPS port is told so in a short 400 (as nginx does), not
/// met with a silent close; a TLS client on the same port is still served.
#[tokio::test]
async fn a_plain_http_request_to_the_tls_port_gets_a_400_saying_it_speaks_https() {
    let pki = pki();
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("cert.pem"), &pki.cert_pem).unwrap();
    crate::support::write_private(dir.path().join("key.pem"), &pki.key_pem);
    let gw = GatewayBuilder::route("all", "/", &up.url(), "auth = \"public\"")
        .and(&format!(
            "[server.tls]\ncert = \"{0}/cert.pem\"\nkey = \"{0}/key.pem\"",
            dir.path().display()
        ))
        .start()
        .await;
    let started = std::time::Instant::now();
    let out = crate::support::raw(
        gw.addr,
        b"GET /secure HTTP/1.1\r\nHost: localhost\r\n\r\n",
        std::time::Duration::from_secs(5),
    )
    .await;
    assert_eq!(crate::support::raw_status(&out), 400, "{out}");
    assert!(out.contains("Connection: close"), "{out}");
    assert!(out.contains("HTTPS port"), "{out}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(4),
        "closed promptly"
    );
    up.assert_untouched();
    let url = format!("https://127.0.0.1:{}/secure", gw.addr.port());
    let r = tls_client(&pki.cert_pem, true)
        .get(&url)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}

/// A TLS private key others can read is refused like a signing key: at start and by
/// `check-config`, naming the file and the fix.
#[tokio::test]
async fn a_world_readable_tls_private_key_is_refused_at_start_and_by_check_config() {
    use std::os::unix::fs::PermissionsExt as _;
    let pki = pki();
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("key.pem");
    std::fs::write(dir.path().join("cert.pem"), &pki.cert_pem).unwrap();
    crate::support::write_private(&key, &pki.key_pem);
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let data = dir.path().display();
    let file = dir.path().join("gatehouse.toml");
    std::fs::write(
        &file,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[server.tls]\ncert = \"{data}/cert.pem\"\nkey = \"{data}/key.pem\"\n[admin]\nenabled = false\n[auth]\nkeys_dir = \"{data}/keys\"\n[store]\npath = \"{data}/db\"\n{}",
            crate::support::route("all", "/", "http://127.0.0.1:9", "auth = \"public\"")
        ),
    )
    .unwrap();
    for command in ["check-config", "serve"] {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_gatehouse"))
            .env_remove("GATEHOUSE_CONFIG")
            .env_remove("GATEHOUSE_LOG")
            .args([command, "--config"])
            .arg(&file)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while child.try_wait().unwrap().is_none() {
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{command} started with a world-readable TLS key");
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let out = child.wait_with_output().unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!out.status.success(), "{command}: {text}");
        assert!(
            text.contains(&key.display().to_string()),
            "{command}: {text}"
        );
        assert!(text.contains("chmod 600"), "{command}: {text}");
    }
}

#[tokio::test]
async fn https_listener_negotiates_h2_and_http1_with_alpn() {
    let pki = pki();
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("cert.pem"), &pki.cert_pem).unwrap();
    crate::support::write_private(dir.path().join("key.pem"), &pki.key_pem);
    let gw = GatewayBuilder::route("all", "/", &up.url(), "auth = \"public\"")
        .and(&format!(
            "[server.tls]\ncert = \"{0}/cert.pem\"\nkey = \"{0}/key.pem\"",
            dir.path().display()
        ))
        .start()
        .await;
    let url = format!("https://127.0.0.1:{}/secure", gw.addr.port());
    let r = tls_client(&pki.cert_pem, false)
        .get(&url)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.version(), http::Version::HTTP_2);
    let r = tls_client(&pki.cert_pem, true)
        .get(&url)
        .send()
        .await
        .unwrap();
    assert_eq!(r.version(), http::Version::HTTP_11);
    let seen = up.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0].header("x-forwarded-proto"), Some("https"));
}

/// An HTTPS upstream with its own generated certificate.
async fn tls_upstream(pki: &Pki) -> std::net::SocketAddr {
    use rustls_pki_types::pem::PemObject;
    let certs =
        vec![rustls_pki_types::CertificateDer::from_pem_slice(pki.cert_pem.as_bytes()).unwrap()];
    let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(pki.key_pem.as_bytes()).unwrap();
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let mut config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(stream).await else {
                    return;
                };
                let service = service_fn(|req: http::Request<hyper::body::Incoming>| async move {
                    let v = format!("{:?} {}", req.version(), req.uri().path());
                    Ok::<_, Infallible>(http::Response::new(gatehouse::body::full(v)))
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn https_upstream_is_verified_against_the_configured_ca() {
    let pki = pki();
    let addr = tls_upstream(&pki).await;
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &pki.cert_pem).unwrap();
    let upstream = format!("https://127.0.0.1:{}", addr.port());
    let trusted = GatewayBuilder::route("tls", "/", &upstream, "auth = \"public\"")
        .and(&format!("[upstream]\nca_file = \"{}\"", ca.display()))
        .start()
        .await;
    let r = crate::support::client()
        .get(trusted.url("/x"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body = r.text().await.unwrap();
    assert!(body.ends_with("/x"), "{body}");

    // Without the CA, the upstream's certificate is not trusted: 502.
    let untrusted = GatewayBuilder::route("tls", "/", &upstream, "auth = \"public\"")
        .start()
        .await;
    let r = crate::support::client()
        .get(untrusted.url("/x"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_GATEWAY);
}
