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
