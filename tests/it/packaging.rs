//! The packaging files (`Dockerfile`, `packaging/gatehouse.service`) keep the properties README
//! promises: `.ci/run` builds the image and runs `systemd-analyze verify` where it can; these
//! checks hold the files to the hardening and to the gateway's real health endpoint everywhere.

use std::path::Path;

fn read(file: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(file)).unwrap()
}

/// The directives of `[section]` of a unit file, as `key=value` lines.
fn directives(unit: &str) -> Vec<&str> {
    unit.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with('['))
        .collect()
}

/// A unit that loses a sandboxing line still starts: only a check notices.
#[test]
fn the_systemd_unit_runs_sandboxed_unprivileged_and_reloads_by_sighup() {
    let unit = read("packaging/gatehouse.service");
    let lines = directives(&unit);
    for required in [
        "Type=exec",
        "User=gatehouse",
        "ExecStart=/usr/local/bin/gatehouse serve",
        "ExecStartPre=/usr/local/bin/gatehouse check-config",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "StateDirectory=gatehouse",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "PrivateDevices=yes",
        "NoNewPrivileges=yes",
        "CapabilityBoundingSet=CAP_NET_BIND_SERVICE",
        "RestrictSUIDSGID=yes",
        "SystemCallFilter=@system-service",
        "UMask=0077",
    ] {
        assert!(lines.contains(&required), "the unit lacks {required}");
    }
    // Writable paths beyond the state directory would undo ProtectSystem=strict.
    assert!(
        !lines.iter().any(|l| l.starts_with("ReadWritePaths=")),
        "{unit}"
    );
    let sysusers = read("packaging/gatehouse.sysusers");
    assert!(sysusers.contains("u gatehouse "), "{sysusers}");
}

#[test]
fn the_image_runs_unprivileged_with_a_health_check_on_the_admin_healthz() {
    let dockerfile = read("Dockerfile");
    let stages =
        dockerfile.matches("\nFROM ").count() + usize::from(dockerfile.starts_with("FROM "));
    assert!(stages >= 2, "a build stage and a runtime stage");
    let user = dockerfile
        .lines()
        .rfind(|l| l.starts_with("USER "))
        .expect("a USER line");
    assert!(!user.contains("root") && !user.contains(" 0"), "{user}");
    let health = dockerfile
        .lines()
        .skip_while(|l| !l.starts_with("HEALTHCHECK"))
        .take(2)
        .collect::<String>();
    // The admin listener's default address, and the path it serves liveness on.
    let admin = gatehouse::config::DEFAULT_ADMIN_LISTEN.replace(':', "/");
    assert!(health.contains(&format!("/dev/tcp/{admin}")), "{health}");
    assert!(health.contains("GET /healthz"), "{health}");
    assert!(dockerfile.contains("COPY config/gatehouse.example.toml /etc/gatehouse/"));
    // The context admits what the build reads, never a local target/ or data/ (a store, keys).
    let ignore = read(".dockerignore");
    let rules = directives(&ignore);
    assert_eq!(rules.first(), Some(&"*"), "{ignore}");
    assert!(
        !rules
            .iter()
            .any(|r| r.starts_with("!target") || r.starts_with("!data")),
        "{ignore}"
    );
}
