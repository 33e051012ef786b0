//! Operator commands: init, set-peer, check-config.

use protocol::Role;
use server_core::config::{Config, Registration};
use server_core::ops::{InitOptions, check_config, init, set_peer};

#[test]
fn init_set_peer_and_check_config() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mk = |role, sub: &str, port: u16| InitOptions {
        role,
        data_dir: dir.path().join(sub),
        listen: format!("127.0.0.1:{port}"),
        peer_listen: format!("127.0.0.1:{}", port + 1),
        admin_listen: Some(format!("127.0.0.1:{}", port + 2)),
        params_t0: Some(1_700_000_000_000),
        registration: Registration::Open,
    };
    let a = init(&mk(Role::A, "a", 7101)).expect("init a");
    let b = init(&mk(Role::B, "b", 7201)).expect("init b");
    assert!(
        init(&mk(Role::A, "a", 7101)).is_err(),
        "init refuses to overwrite"
    );
    // Nor does it overwrite keys left without a config (e.g. a restored backup).
    let c = dir.path().join("c");
    std::fs::create_dir_all(&c).expect("mkdir");
    std::fs::write(c.join("signing.key"), "restored").expect("write");
    assert!(
        init(&mk(Role::A, "c", 7301)).is_err(),
        "init keeps existing keys"
    );
    assert_eq!(
        std::fs::read_to_string(c.join("signing.key")).expect("read"),
        "restored"
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        // config.toml too: it can hold invite tokens.
        for f in ["signing.key", "tls.key", "config.toml"] {
            let mode = std::fs::metadata(dir.path().join("a").join(f))
                .expect("meta")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{f}");
        }
    }
    // Before set-peer the config is incomplete.
    assert!(check_config(&a.config_path).is_err());
    // A peer address without a port is refused at set-peer time, not when the server starts.
    assert!(
        set_peer(
            &a.config_path,
            "nonsense",
            &b.cert_pin.to_string(),
            &hex::encode(b.signing_public_key),
        )
        .is_err()
    );
    set_peer(
        &a.config_path,
        "127.0.0.1:7202",
        &b.cert_pin.to_string(),
        &hex::encode(b.signing_public_key),
    )
    .expect("set a");
    set_peer(
        &b.config_path,
        "127.0.0.1:7102",
        &a.cert_pin.to_string(),
        &hex::encode(a.signing_public_key),
    )
    .expect("set b");
    assert!(
        set_peer(&a.config_path, "x:1", "sha256:00", "zz").is_err(),
        "bad pin refused"
    );
    let ca = check_config(&a.config_path).expect("check a");
    assert_eq!(ca.cert_pin, a.cert_pin);
    assert_eq!(ca.signing_public_key, a.signing_public_key);
    assert_eq!(ca.config.params, a.params);
    assert_eq!(
        ca.config.params.fingerprint(),
        b.params.fingerprint(),
        "same t0 -> same params"
    );
    assert_eq!(ca.config.data_dir, dir.path().join("a").join("."));
    // A non-loopback admin address is refused.
    let mut raw = Config::load_raw(&a.config_path).expect("raw");
    raw.admin_listen = Some("0.0.0.0:9".into());
    raw.save(&a.config_path).expect("save");
    assert!(check_config(&a.config_path).is_err());
}
