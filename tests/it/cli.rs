//! The binary's `check-config` command.

use std::process::Command;

fn gatehouse() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_gatehouse"));
    c.env_remove("GATEHOUSE_CONFIG");
    c
}

#[test]
fn check_config_names_the_unknown_key_and_fails() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "[server]\nlisten = \"127.0.0.1:1\"\nmax_conections = 5\n",
    )
    .unwrap();
    let out = gatehouse()
        .args(["check-config", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("max_conections"), "{stderr}");
}

#[test]
fn check_config_summarises_a_good_file() {
    let out = gatehouse()
        .args(["check-config", "--config", "config/gatehouse.example.toml"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("configuration OK"), "{stdout}");
    assert!(stdout.contains("/api"), "{stdout}");
}

#[test]
fn stray_environment_variable_is_reported_by_name() {
    let out = gatehouse()
        .args(["check-config", "--config", "config/gatehouse.example.toml"])
        .env("GATEHOUSE_SERVER__LISTN", "127.0.0.1:1")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.to_lowercase().contains("listn"), "{stderr}");
}

/// The variables Kubernetes injects into every pod for a Service named `gatehouse` (the
/// docker-links shape): the strict environment check must not crash the pod on them, and must
/// still refuse a misspelt real key.
#[test]
fn kubernetes_service_link_variables_do_not_crash_the_gateway() {
    let links = [
        ("GATEHOUSE_PORT", "tcp://10.0.0.1:8080"),
        ("GATEHOUSE_SERVICE_HOST", "10.0.0.1"),
        ("GATEHOUSE_SERVICE_PORT", "8080"),
        ("GATEHOUSE_SERVICE_PORT_HTTP", "8080"),
        ("GATEHOUSE_PORT_8080_TCP", "tcp://10.0.0.1:8080"),
        ("GATEHOUSE_PORT_8080_TCP_PROTO", "tcp"),
        ("GATEHOUSE_PORT_8080_TCP_PORT", "8080"),
        ("GATEHOUSE_PORT_8080_TCP_ADDR", "10.0.0.1"),
        ("GATEHOUSE_PORT_9901_UDP_ADDR", "10.0.0.1"),
    ];
    let out = gatehouse()
        .args(["check-config", "--config", "config/gatehouse.example.toml"])
        .envs(links)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = gatehouse()
        .args(["check-config", "--config", "config/gatehouse.example.toml"])
        .envs(links)
        .env("GATEHOUSE_SERVER__LISTNE", "127.0.0.1:1")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.to_lowercase().contains("listne"), "{stderr}");
    for near_miss in [
        "GATEHOUSE_PORTS",
        "GATEHOUSE_PORT_8080",
        "GATEHOUSE_PORT_8080_TCP_HOST",
    ] {
        let out = gatehouse()
            .args(["check-config", "--config", "config/gatehouse.example.toml"])
            .env(near_miss, "1")
            .output()
            .unwrap();
        assert!(!out.status.success(), "{near_miss} was accepted");
    }
}

#[test]
fn environment_overrides_the_file() {
    let out = gatehouse()
        .args(["check-config", "--config", "config/gatehouse.example.toml"])
        .env("GATEHOUSE_SERVER__LISTEN", "127.0.0.1:18443")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("127.0.0.1:18443"), "{stdout}");
}

/// The shadowing config of issue 20 item 1, at equal prefixes: a public route for one host that
/// would take the requests a protected host-less route serves for every other host.
fn shadowing(opt_in: &str) -> String {
    format!(
        "[[routes]]\nname = \"admin\"\npath_prefix = \"/admin\"\nupstream = \"http://127.0.0.1:9000\"\nrequire_roles = [\"admin\"]\n\n\
         [[routes]]\nname = \"www\"\npath_prefix = \"/admin\"\nhost = \"www.example.test\"\nupstream = \"http://127.0.0.1:9001\"\nauth = \"public\"\n{opt_in}\n\n\
         [[routes]]\nname = \"site\"\npath_prefix = \"/\"\nhost = \"www.example.test\"\nupstream = \"http://127.0.0.1:9001\"\nauth = \"public\"\n"
    )
}

#[test]
fn check_config_refuses_a_host_route_that_weakens_a_protected_prefix() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shadow.toml");
    std::fs::write(&path, shadowing("")).unwrap();
    let out = gatehouse()
        .args(["check-config", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("routes[www].allow_shadowing"), "{stderr}");
    assert!(stderr.contains("stronger auth policy"), "{stderr}");

    std::fs::write(&path, shadowing("allow_shadowing = true")).unwrap();
    let out = gatehouse()
        .args(["check-config", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("warning   route \"www\"") && stdout.contains("allowed by allow_shadowing"),
        "{stdout}"
    );
}

#[test]
fn routes_explain_names_the_routes_that_would_otherwise_match() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shadow.toml");
    std::fs::write(&path, shadowing("allow_shadowing = true")).unwrap();
    let explain = |host: &str, path_: &str| {
        let out = gatehouse()
            .args(["routes", "explain", "--config"])
            .arg(&path)
            .arg("GET")
            .arg(format!("http://{host}{path_}"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let text = explain("WWW.example.test:80", "/admin/users");
    assert!(text.contains("route      www"), "{text}");
    assert!(
        text.contains("otherwise  admin (/admin, auth required, roles admin) would match; loses by no host at the same prefix"),
        "{text}"
    );
    assert!(
        text.contains(
            "otherwise  site (www.example.test/, public) would match; loses by a shorter prefix"
        ),
        "{text}"
    );
    let text = explain("other.test", "/admin/users");
    assert!(text.contains("route      admin"), "{text}");
    assert!(!text.contains("otherwise"), "{text}");
}

/// A config whose store and keys live in a tempdir, with argon2 cheap enough for tests.
fn user_config(dir: &std::path::Path, extra_auth: &str) -> std::path::PathBuf {
    let path = dir.join("gatehouse.toml");
    std::fs::write(
        &path,
        format!(
            "[store]\npath = {:?}\n\n[auth]\nkeys_dir = {:?}\n{extra_auth}\n\n[auth.password]\nmemory_kib = 8\niterations = 1\nparallelism = 1\n",
            dir.join("store.db"),
            dir.join("keys"),
        ),
    )
    .unwrap();
    path
}

/// Runs `gatehouse --config CONFIG user ARGS` with `stdin` as the password line.
fn user_cmd(config: &std::path::Path, args: &[&str], stdin: &str) -> std::process::Output {
    use std::io::Write;
    let mut child = gatehouse()
        .arg("--config")
        .arg(config)
        .arg("user")
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin.as_bytes()).unwrap();
    drop(input);
    child.wait_with_output().unwrap()
}

fn ok(out: &std::process::Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn roles_no_token_can_carry_are_refused_before_they_break_every_login() {
    let dir = tempfile::tempdir().unwrap();
    let config = user_config(dir.path(), "");
    for bad in [
        ["--role", "ops team"],
        ["--role", "user,ops"],
        ["--role", ""],
        ["--scope", "read write"],
    ] {
        let mut args = vec!["add", "alice", "--password-stdin", "--create-store"];
        args.extend(bad);
        let out = user_cmd(&config, &args, "correct horse\n");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{bad:?} was accepted");
        assert!(stderr.contains("printable ASCII"), "{bad:?}: {stderr}");
    }
    assert!(!ok(&user_cmd(&config, &["list"], "")).contains("alice"));

    ok(&user_cmd(
        &config,
        &["add", "alice", "--password-stdin", "--role", "user"],
        "correct horse\n",
    ));
    let out = user_cmd(&config, &["update", "alice", "--role", "ops team"], "");
    assert!(!out.status.success());
    ok(&user_cmd(
        &config,
        &["update", "alice", "--role", "ops", "--scope", "read"],
        "",
    ));
    let list = ok(&user_cmd(&config, &["list"], ""));
    assert!(list.contains("roles=ops\tscopes=read"), "{list}");
}

#[test]
fn default_roles_no_token_can_carry_fail_config_load() {
    let dir = tempfile::tempdir().unwrap();
    let many: Vec<String> = (0..65).map(|i| format!("\"r{i}\"")).collect();
    let config = user_config(dir.path(), &format!("default_roles = [{}]", many.join(",")));
    let out = gatehouse()
        .arg("check-config")
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("auth.default_roles"), "{stderr}");
}

/// Lockout must have a way out that does not wait out the ban: `user list` shows it,
/// `user unlock` ends it, and `user passwd` (the usual answer to a locked owner) ends it too.
#[tokio::test]
async fn locked_out_owner_is_let_back_in_by_unlock_and_by_passwd() {
    use crate::support::{GatewayBuilder, client};
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("gatehouse.toml");
    let gw = GatewayBuilder::new(
        "[auth.limits]\nper_address_burst = 100\nper_user_burst = 100\nmax_failures = 2\nban_time = \"15m\"",
    )
    .start_from_file(dir, &file)
    .await;
    gw.add_user("alice", "secret", &[], &[]).await;
    let attempt = |password: &'static str| {
        let url = gw.url("/auth/token");
        async move {
            client()
                .post(url)
                .form(&[
                    ("grant_type", "password"),
                    ("username", "alice"),
                    ("password", password),
                ])
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    let lock = || async {
        for _ in 0..2 {
            assert_eq!(attempt("wrong").await, 400);
        }
        assert_eq!(attempt("secret").await, 429);
    };
    let cli = |args: &'static [&'static str], stdin: &'static str| {
        let file = file.clone();
        tokio::task::spawn_blocking(move || user_cmd(&file, args, stdin))
    };

    lock().await;
    let list = ok(&cli(&["list"], "").await.unwrap());
    assert!(list.contains("locked until 20"), "{list}");
    assert!(list.trim_end().ends_with('Z'), "{list}");
    assert!(ok(&cli(&["unlock", "alice"], "").await.unwrap()).contains("unlocked alice"));
    assert!(!ok(&cli(&["list"], "").await.unwrap()).contains("locked"));
    assert_eq!(attempt("secret").await, 200);

    lock().await;
    ok(
        &cli(&["passwd", "alice", "--password-stdin"], "new secret 1\n")
            .await
            .unwrap(),
    );
    assert_eq!(attempt("new secret 1").await, 200);
}

/// An operator-set password must meet the floor registration applies, and follow its setting.
#[test]
fn cli_passwords_shorter_than_registration_allows_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let config = user_config(dir.path(), "");
    let out = user_cmd(
        &config,
        &["add", "bob", "--password-stdin", "--create-store"],
        "1234567\n",
    );
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("shorter than 8 characters"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    ok(&user_cmd(
        &config,
        &["add", "bob", "--password-stdin"],
        "12345678\n",
    ));

    let dir = tempfile::tempdir().unwrap();
    let config = user_config(dir.path(), "min_password_chars = 12");
    ok(&user_cmd(
        &config,
        &["add", "bob", "--password-stdin", "--create-store"],
        "123456789012\n",
    ));
    let out = user_cmd(
        &config,
        &["passwd", "bob", "--password-stdin"],
        "12345678901\n",
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("shorter than 12 characters"));
}

/// `keys` with a KEK: the key-encryption key is written once, private (never overwritten), and
/// a rotation goes to the store, published at once and signing only after `publish_ahead`;
/// nothing is written to the key directory; a KEK others can read is refused.
#[test]
fn keys_rotate_with_a_kek_file_publishes_in_the_store_before_it_signs() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let kek = dir.path().join("kek");
    let keys = |config: &std::path::Path, args: &[&str]| {
        gatehouse()
            .arg("--config")
            .arg(config)
            .arg("keys")
            .args(args)
            .output()
            .unwrap()
    };
    let new_kek = |path: &std::path::Path| {
        gatehouse()
            .args(["keys", "new-kek"])
            .arg(path)
            .output()
            .unwrap()
    };
    ok(&new_kek(&kek));
    assert_eq!(
        std::fs::metadata(&kek).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let written = std::fs::read(&kek).unwrap();
    let again = new_kek(&kek);
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("already exists"),
        "{again:?}"
    );
    assert_eq!(std::fs::read(&kek).unwrap(), written);

    let config = user_config(dir.path(), &format!("kek_file = {kek:?}"));
    let missing = keys(&config, &["generate"]);
    assert!(!missing.status.success(), "{missing:?}");
    assert!(!dir.path().join("store.db").exists(), "a store was created");
    let first = ok(&keys(&config, &["generate", "--create-store"]));
    let first = first
        .trim()
        .strip_prefix("current key ")
        .unwrap()
        .to_owned();
    let rotated = ok(&keys(&config, &["rotate"]));
    assert!(rotated.contains("published now, signs from"), "{rotated}");
    let list = ok(&keys(&config, &["list"]));
    let lines: Vec<&str> = list.lines().collect();
    assert_eq!(lines.len(), 2, "{list}");
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with(&first) && l.ends_with("current")),
        "{list}"
    );
    assert!(
        lines.iter().any(|l| l.contains("published, signs from")),
        "{list}"
    );
    assert!(!dir.path().join("keys").exists(), "nothing in keys_dir");

    std::fs::set_permissions(&kek, std::fs::Permissions::from_mode(0o644)).unwrap();
    let refused = keys(&config, &["list"]);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("chmod 600"),
        "{refused:?}"
    );
}

/// The binary in `cwd` as an operator runs it: `HOME` there too, no `GATEHOUSE_CONFIG`.
fn operator(cwd: &std::path::Path) -> Command {
    let mut c = gatehouse();
    c.current_dir(cwd)
        .env("HOME", cwd)
        .env_remove("GATEHOUSE_LOG");
    c
}

/// Whether this machine has a system-wide configuration, which the search would find.
fn system_config() -> bool {
    let there = std::path::Path::new("/etc/gatehouse/gatehouse.toml").exists();
    if there {
        eprintln!("skipped: /etc/gatehouse/gatehouse.toml exists on this machine");
    }
    there
}

#[test]
fn check_config_without_a_config_file_does_not_call_the_defaults_ok() {
    if system_config() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = operator(dir.path()).arg("check-config").output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stdout}{stderr}");
    assert!(!stdout.contains("configuration OK"), "{stdout}");
    assert!(stderr.contains("no configuration file"), "{stderr}");
    for looked in [
        "GATEHOUSE_CONFIG",
        "./gatehouse.toml",
        "/etc/gatehouse/gatehouse.toml",
    ] {
        assert!(stderr.contains(looked), "{looked}: {stderr}");
    }
}

#[test]
fn the_cli_finds_its_config_in_order_and_says_which_it_used() {
    if system_config() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let listen =
        |port: u16| format!("[server]\nlisten = \"127.0.0.1:{port}\"\nallow_no_routes = true\n");
    std::fs::write(dir.path().join("gatehouse.toml"), listen(18001)).unwrap();
    std::fs::write(dir.path().join("env.toml"), listen(18002)).unwrap();
    std::fs::write(dir.path().join("flag.toml"), listen(18003)).unwrap();
    let run = |c: &mut Command, port: u16, used: &str| {
        let out = c.arg("check-config").output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{stdout}{stderr}");
        assert!(stdout.contains(&format!("127.0.0.1:{port}")), "{stdout}");
        let announced: Vec<&str> = stderr
            .lines()
            .filter(|l| l.starts_with("gatehouse: configuration"))
            .collect();
        assert_eq!(announced.len(), 1, "{stderr}");
        assert!(announced[0].contains(used), "{used}: {stderr}");
    };
    run(&mut operator(dir.path()), 18001, "./gatehouse.toml (found)");
    run(
        operator(dir.path()).env("GATEHOUSE_CONFIG", "env.toml"),
        18002,
        "env.toml (from GATEHOUSE_CONFIG)",
    );
    run(
        operator(dir.path())
            .env("GATEHOUSE_CONFIG", "env.toml")
            .args(["--config", "flag.toml"]),
        18003,
        "flag.toml (from --config)",
    );
}

#[test]
fn user_management_commands_never_create_a_store() {
    if system_config() {
        return;
    }
    // No configuration at all: the default store is not created in the working directory.
    let dir = tempfile::tempdir().unwrap();
    for args in [
        &["user", "list"][..],
        &["sessions", "list"],
        &["user", "remove", "bob"],
        &["client", "list"],
        &["client", "add", "ci"],
    ] {
        let out = operator(dir.path()).args(args).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?}: {stderr}");
        assert!(
            stderr.contains("data/gatehouse.db does not exist"),
            "{args:?}: {stderr}"
        );
        assert!(
            stderr.contains("no configuration file"),
            "{args:?}: {stderr}"
        );
    }
    assert!(!dir.path().join("data").exists(), "a store was created");

    // A configuration naming a store that is not there yet.
    let config = user_config(dir.path(), "");
    let db = dir.path().join("store.db");
    for args in [
        &["user", "list"][..],
        &["sessions", "list"],
        &["client", "list"],
    ] {
        let out = operator(dir.path())
            .arg("--config")
            .arg(&config)
            .args(args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?}: {stderr}");
        assert!(
            stderr.contains(&format!("{} does not exist", db.display())),
            "{stderr}"
        );
    }
    let out = user_cmd(
        &config,
        &["add", "alice", "--password-stdin"],
        "correct horse\n",
    );
    assert!(!out.status.success());
    assert!(!db.exists(), "a store was created");
    // Asked for by name, the first user creates it.
    ok(&user_cmd(
        &config,
        &["add", "alice", "--password-stdin", "--create-store"],
        "correct horse\n",
    ));
    assert!(ok(&user_cmd(&config, &["list"], "")).contains("alice"));
}

/// Relative paths in a config file are relative to the file's directory: run from elsewhere,
/// the binary keeps its store and keys next to the file, and creates nothing where it runs.
#[test]
fn relative_paths_resolve_against_the_config_files_directory() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let config = a.path().join("gatehouse.toml");
    std::fs::write(
        &config,
        "[server]\nallow_no_routes = true\n\n[store]\npath = \"state/gatehouse.db\"\n\n\
         [auth]\nkeys_dir = \"state/keys\"\n\n[auth.password]\nmemory_kib = 8\niterations = 1\nparallelism = 1\n",
    )
    .unwrap();
    let run = |args: &[&str], stdin: &str| {
        use std::io::Write;
        let mut child = operator(b.path())
            .arg("--config")
            .arg(&config)
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut input = child.stdin.take().unwrap();
        input.write_all(stdin.as_bytes()).unwrap();
        drop(input);
        ok(&child.wait_with_output().unwrap())
    };
    let summary = run(&["check-config"], "");
    let keys = a.path().join("state/keys");
    assert!(summary.contains(&keys.display().to_string()), "{summary}");
    run(
        &["user", "add", "alice", "--password-stdin", "--create-store"],
        "correct horse\n",
    );
    run(&["keys", "generate"], "");
    assert!(a.path().join("state/gatehouse.db").is_file());
    assert!(
        std::fs::read_dir(&keys).unwrap().next().is_some(),
        "no key in {keys:?}"
    );
    assert!(
        !b.path().join("state").exists(),
        "created under the working directory"
    );
    assert!(run(&["user", "list"], "").contains("alice"));
}

/// A bcrypt hash as passlib writes it (cost 4: the tests never log in with it).
fn bcrypt_hash() -> String {
    bcrypt::hash("imported password", 4).unwrap()
}

fn import(
    config: &std::path::Path,
    file: &std::path::Path,
    extra: &[&str],
) -> std::process::Output {
    let mut args = vec!["import", file.to_str().unwrap()];
    args.extend(extra);
    user_cmd(config, &args, "")
}

/// An import that stops half-way leaves half the users in: the operator cannot simply run it
/// again. One taken name refuses the whole file, naming its line, unless `--skip-existing`.
#[test]
fn user_import_writes_nothing_when_a_name_is_taken_unless_told_to_skip_it() {
    let dir = tempfile::tempdir().unwrap();
    let config = user_config(dir.path(), "");
    ok(&user_cmd(
        &config,
        &["add", "alice", "--password-stdin", "--create-store"],
        "correct horse\n",
    ));
    let h = bcrypt_hash();
    let file = dir.path().join("users.csv");
    std::fs::write(
        &file,
        format!("username,password_hash,roles\nbob,{h},user\nalice,{h}\ncarol,{h}\n"),
    )
    .unwrap();

    let out = import(&config, &file, &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{stdout}");
    assert!(
        stdout.contains("refused   line 3: user alice already exists"),
        "{stdout}"
    );
    assert!(
        stdout.contains("imported 0, skipped 0, refused 1"),
        "{stdout}"
    );
    let list = ok(&user_cmd(&config, &["list"], ""));
    assert!(
        !list.contains("bob") && !list.contains("carol"),
        "a refused import wrote users:\n{list}"
    );

    let stdout = ok(&import(&config, &file, &["--skip-existing"]));
    assert!(
        stdout.contains("skipped   line 3: user alice already exists, left as it is"),
        "{stdout}"
    );
    assert!(
        stdout.contains("imported 2, skipped 1, refused 0"),
        "{stdout}"
    );
    let list = ok(&user_cmd(&config, &["list"], ""));
    assert!(list.contains("bob\tenabled\troles=user"), "{list}");
    assert!(list.contains("carol"), "{list}");
    assert!(
        !std::fs::read(dir.path().join("store.db"))
            .unwrap()
            .is_empty()
    );
}

/// Every bad line of a file is reported at once, by line number and reason, and none of the
/// good lines is written.
#[test]
fn user_import_reports_every_refused_line_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let config = user_config(dir.path(), "");
    ok(&user_cmd(
        &config,
        &["add", "alice", "--password-stdin", "--create-store"],
        "correct horse\n",
    ));
    let h = bcrypt_hash();
    let file = dir.path().join("users.jsonl");
    std::fs::write(
        &file,
        format!(
            "{{\"username\": \"dave\", \"password_hash\": \"{h}\"}}\n\
             {{\"username\": \"erin\", \"password_hash\": \"hunter2\"}}\n\
             {{\"username\": \"-x\", \"password_hash\": \"{h}\"}}\n\
             {{\"username\": \"Dave\", \"password_hash\": \"{h}\", \"roles\": [\"a\"]}}\n\
             {{\"username\": \"frank\", \"password_hash\": \"{h}\", \"groups\": []}}\n"
        ),
    )
    .unwrap();
    let out = import(&config, &file, &["--skip-existing"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{stdout}");
    for expected in [
        "refused   line 2: password_hash must be",
        "refused   line 3: username \"-x\"",
        "refused   line 4: username dave is already on line 1",
        "refused   line 5: unknown field `groups`",
        "imported 0, skipped 0, refused 4",
    ] {
        assert!(stdout.contains(expected), "no {expected:?} in\n{stdout}");
    }
    assert!(
        !stdout.contains("hunter2"),
        "a refusal echoed a hash: {stdout}"
    );
    let list = ok(&user_cmd(&config, &["list"], ""));
    assert!(!list.contains("dave"), "{list}");
}

#[test]
fn user_import_help_documents_the_accepted_fields() {
    let out = gatehouse()
        .args(["user", "import", "--help"])
        .output()
        .unwrap();
    let help = ok(&out);
    for field in [
        "JSON lines",
        "CSV",
        "username",
        "password_hash",
        "roles",
        "scopes",
        "$2b$",
        "$argon2id$",
        "--skip-existing",
        "all or nothing",
    ] {
        assert!(help.contains(field), "no {field:?} in\n{help}");
    }
}

/// `user list` and `keys list` print times an operator can read (RFC 3339, UTC), and with
/// `--json` one JSON object per line, as `client list --json` does.
#[test]
fn user_and_keys_lists_print_readable_times_and_json_lines() {
    let dir = tempfile::tempdir().unwrap();
    let config = user_config(dir.path(), "");
    ok(&user_cmd(
        &config,
        &[
            "add",
            "alice",
            "--password-stdin",
            "--create-store",
            "--role",
            "ops",
        ],
        "correct horse\n",
    ));
    let rfc3339 = |text: &str, after: &str| -> bool {
        text.split(after).nth(1).is_some_and(|rest| {
            let t = rest.get(..20).unwrap_or("");
            t.len() == 20
                && t.as_bytes()[4] == b'-'
                && t.as_bytes()[10] == b'T'
                && t.ends_with('Z')
                && t[..4].parse::<u32>().is_ok_and(|y| y >= 2024)
        })
    };

    let list = ok(&user_cmd(&config, &["list"], ""));
    assert!(rfc3339(&list, "created="), "{list}");
    let json = ok(&user_cmd(&config, &["list", "--json"], ""));
    let users: Vec<serde_json::Value> = json
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(users.len(), 1, "{json}");
    assert_eq!(users[0]["username"], "alice");
    assert_eq!(users[0]["roles"], serde_json::json!(["ops"]));
    assert_eq!(users[0]["disabled"], false);
    assert!(users[0]["created_at"].is_i64(), "{json}");
    assert_eq!(users[0]["locked_everywhere_until"], serde_json::Value::Null);
    assert_eq!(users[0]["locked_networks"], serde_json::json!([]));

    let keys = |args: &[&str]| {
        ok(&gatehouse()
            .arg("--config")
            .arg(&config)
            .arg("keys")
            .args(args)
            .output()
            .unwrap())
    };
    keys(&["generate"]);
    let list = keys(&["list"]);
    assert!(rfc3339(&list, "created "), "{list}");
    assert!(list.trim_end().ends_with("current"), "{list}");
    let json = keys(&["list", "--json"]);
    let key: serde_json::Value = serde_json::from_str(json.trim()).unwrap();
    assert_eq!(key["state"], "current");
    assert!(key["created_at"].is_i64(), "{json}");
    assert!(list.starts_with(key["kid"].as_str().unwrap()), "{list}");
}

/// Completions and the man page come from the command-line definition and need no
/// configuration (packaging runs them at build time).
#[test]
fn completions_and_man_page_are_generated_without_a_configuration() {
    let dir = tempfile::tempdir().unwrap();
    for (args, expected) in [
        (
            &["completions", "bash"][..],
            &["user", "import", "check-config", "--skip-existing"][..],
        ),
        (&["completions", "zsh"], &["user", "import", "check-config"]),
        (
            &["completions", "fish"],
            &["user", "import", "check-config"],
        ),
        (
            &["man"],
            &[".TH gatehouse", "user", "check\\-config", "completions"],
        ),
    ] {
        let out = operator(dir.path()).args(args).output().unwrap();
        let stdout = ok(&out);
        for name in expected {
            assert!(stdout.contains(name), "{args:?}: no {name}");
        }
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("configuration"), "{args:?}: {stderr}");
    }
    let pages = dir.path().join("man1");
    std::fs::create_dir(&pages).unwrap();
    ok(&operator(dir.path())
        .args(["man", "--dir"])
        .arg(&pages)
        .output()
        .unwrap());
    let import = std::fs::read_to_string(pages.join("gatehouse-user-import.1")).unwrap();
    assert!(import.contains("password_hash"), "{import}");
    let out = operator(dir.path())
        .args(["completions", "tcsh"])
        .output()
        .unwrap();
    assert!(!out.status.success());
}

/// `check-config` used to pass a config naming files that do not exist (and `serve` then
/// failed), and stopped at the first bad file it did look at. Now it checks every file the
/// config names and lists every problem at once; `serve` refuses with the same list before it
/// binds anything.
#[test]
fn check_config_and_serve_list_every_unusable_file_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display().to_string();
    std::fs::write(dir.path().join("plain"), "a file, not a directory").unwrap();
    let config = dir.path().join("gatehouse.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[server.tls]\ncert = \"{d}/none/cert.pem\"\nkey = \"{d}/none/key.pem\"\n\
             [upstream]\nca_file = \"{d}/none/ca.pem\"\n\
             [store]\npath = \"{d}/plain/gatehouse.db\"\n\
             [auth]\nkeys_dir = \"{d}/plain\"\n\
             [[auth.trusted_issuers]]\nissuer = \"https://idp.example\"\naudiences = [\"api\"]\njwks_file = \"{d}/none/jwks.json\"\n\
             [[routes]]\nname = \"api\"\npath_prefix = \"/api\"\nupstream = \"http://127.0.0.1:9\"\n"
        ),
    )
    .unwrap();
    for command in ["check-config", "serve"] {
        let out = gatehouse()
            .arg(command)
            .arg("--config")
            .arg(&config)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{command}: {stdout}{stderr}");
        assert!(!stdout.contains("configuration OK"), "{command}: {stdout}");
        assert!(!stderr.contains("listening on"), "{command}: {stderr}");
        for problem in [
            "6 problems",
            "none/cert.pem",
            "none/key.pem",
            "upstream.ca_file",
            "auth.trusted_issuers[0].jwks_file",
            "auth.keys_dir",
            "store.path",
        ] {
            assert!(stderr.contains(problem), "{command}: {problem}: {stderr}");
        }
    }
}

/// The files exist but are not what `serve` can use: a TLS key that belongs to another
/// certificate, a signing key others may read, and no routes at all.
#[test]
fn check_config_refuses_a_mismatched_tls_pair_an_exposed_signing_key_and_no_routes() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display().to_string();
    let a = rcgen::generate_simple_self_signed(vec!["a.test".into()]).unwrap();
    let b = rcgen::generate_simple_self_signed(vec!["b.test".into()]).unwrap();
    std::fs::write(dir.path().join("cert.pem"), a.cert.pem()).unwrap();
    crate::support::write_private(dir.path().join("key.pem"), b.signing_key.serialize_pem());
    let config = dir.path().join("gatehouse.toml");
    let write = |extra: &str| {
        std::fs::write(
            &config,
            format!(
                "[server]\nlisten = \"127.0.0.1:0\"\n{extra}\n[server.tls]\ncert = \"cert.pem\"\nkey = \"key.pem\"\n\
                 [store]\npath = \"{d}/db\"\n[auth]\nkeys_dir = \"{d}/keys\"\n"
            ),
        )
        .unwrap()
    };
    write("");
    let keys = gatehouse()
        .args(["keys", "generate", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(
        keys.status.success(),
        "{}",
        String::from_utf8_lossy(&keys.stderr)
    );
    for entry in std::fs::read_dir(dir.path().join("keys")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "pem") {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        }
    }
    let out = gatehouse()
        .args(["check-config", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    for problem in [
        "3 problems",
        "allow_no_routes",
        "not usable together",
        "auth.keys_dir",
        "644",
    ] {
        assert!(stderr.contains(problem), "{problem}: {stderr}");
    }
    write("allow_no_routes = true");
    let out = gatehouse()
        .args(["check-config", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("2 problems") && !stderr.contains("allow_no_routes"),
        "{stderr}"
    );
}

/// A key of the wrong type, an unknown key or a refused value is cited with the file's line and
/// column.
#[test]
fn config_errors_give_the_line_and_column_of_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gatehouse.toml");
    for (text, at) in [
        ("[server]\n\nlisten = 3\n", ":3:1)"),
        (
            "[[routes]]\nname = \"a\"\npath_prefix = \"/a\"\nupstream = \"http://127.0.0.1:9\"\n\n\
             [[routes]]\nname = \"b\"\n  path_prefx = \"/b\"\n",
            ":8:3)",
        ),
        (
            "[[routes]]\nname = \"a\"\npath_prefix = \"/a\"\n\nupstream = \"ftp://x\"\n",
            ":5:1)",
        ),
        ("[server]\nlisten = \"nowhere\"\n", ":2:1)"),
    ] {
        std::fs::write(&path, text).unwrap();
        let out = gatehouse()
            .args(["check-config", "--config"])
            .arg(&path)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{stderr}");
        assert!(
            stderr.contains(&format!("gatehouse.toml{at}")),
            "{at}: {stderr}"
        );
    }
    // A value from the environment is not blamed on a line of the file.
    std::fs::write(&path, "[server]\nlisten = \"127.0.0.1:1\"\n").unwrap();
    let out = gatehouse()
        .args(["check-config", "--config"])
        .arg(&path)
        .env("GATEHOUSE_SERVER__LISTEN", "nowhere")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("server.listen") && !stderr.contains("gatehouse.toml:"),
        "{stderr}"
    );
}
