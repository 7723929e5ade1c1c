//! The binary refuses a bad config before binding anything: one line naming the key, exit 78.

// Test code: a failed expectation is a failed test, helpers included.
#![allow(clippy::unwrap_used)]

use std::process::Command;

fn gancho(config: &str) -> std::process::Output {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gancho.toml");
    std::fs::write(&path, config).unwrap();
    Command::new(env!("CARGO_BIN_EXE_gancho"))
        .arg("--config")
        .arg(&path)
        .arg("run")
        .env_remove("GANCHO_CONFIG")
        .output()
        .unwrap()
}

#[test]
fn an_invalid_config_prints_one_line_naming_the_key_and_exits_78() {
    // The port is taken, so binding it would fail differently: a config error must come first.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let listen = taken.local_addr().unwrap();
    let out = gancho(&format!(
        "listen = \"{listen}\"\n[sources.bank]\nkind = \"json\"\ntype = \"kind\"\n"
    ));
    assert_eq!(out.status.code(), Some(78));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("sources.bank.type"), "{stderr}");
    assert!(stderr.contains("is not a JSON pointer"), "{stderr}");
}

#[test]
fn an_unknown_key_is_named_with_its_line() {
    let out = gancho("listen = \"127.0.0.1:0\"\n\n[store]\nfsynk = true\n");
    assert_eq!(out.status.code(), Some(78));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.contains("gancho.toml:4: store.fsynk: unknown field `fsynk`"),
        "{stderr}"
    );
}

#[test]
fn check_config_accepts_the_deploy_example() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy/gancho.toml");
    let out = Command::new(env!("CARGO_BIN_EXE_gancho"))
        .args(["--config", example, "check-config"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("config ok: 2 source(s)"));
}
