//! The server config (TOML), parsed as `Config::load`/`load_raw` do (the same `toml` parse)
//! from text instead of a file, then validated.
//!
//! Properties: parsing and validation never panic; a parsed config survives `save`'s
//! serialisation (re-parses to an equal value, which validates alike).
#![no_main]

use libfuzzer_sys::fuzz_target;
use server_core::Config;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(cfg) = toml::from_str::<Config>(text) else {
        return;
    };
    let valid = cfg.validate().is_ok();
    let _ = cfg.peer_pin();
    let _ = cfg.peer_signing_key_bytes();
    let saved = toml::to_string_pretty(&cfg).expect("a parsed config must serialise");
    let back: Config = toml::from_str(&saved).expect("a saved config must parse");
    assert_eq!(back, cfg, "config changed across save and load");
    assert_eq!(back.validate().is_ok(), valid);
});
