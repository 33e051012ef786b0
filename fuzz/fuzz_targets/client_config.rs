//! The client config (`config.toml`), parsed and checked as `ClientConfig::load_unchecked` does
//! (the same `toml` parse, then the public checks it runs), from text instead of a file.
//!
//! Properties: parsing and checking never panic; a checked config's schedule and clock build;
//! a parsed config survives `save`'s serialisation (re-parses to an equal value).
#![no_main]

use client::ClientConfig;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(cfg) = toml::from_str::<ClientConfig>(text) else {
        return;
    };
    for s in cfg.servers() {
        let _ = s.signing_key_bytes();
        let _ = s.cert_pin_bytes();
    }
    if let Some(p) = &cfg.params
        && client::config::check_params(p).is_ok()
    {
        cfg.schedule().expect("checked params give a schedule");
        cfg.clock().expect("checked params give a clock");
    }
    let saved = toml::to_string_pretty(&cfg).expect("a parsed config must serialise");
    let back: ClientConfig = toml::from_str(&saved).expect("a saved config must parse");
    assert_eq!(back, cfg, "config changed across save and load");
});
