//! Config parsing: any text gives either a config with at least one volume, or errors that each
//! name the file and say what is wrong; never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    let file = std::path::Path::new("/etc/segd/fuzz.toml");
    match segd::config::Config::parse(text, file) {
        Ok(cfg) => {
            assert!(!cfg.volumes.is_empty());
            assert!(!cfg.server.listen.is_empty());
            assert!(cfg.cache.max_item_bytes <= cfg.cache.max_bytes);
        }
        Err(errs) => {
            assert!(!errs.is_empty());
            for e in errs.iter() {
                assert!(e.to_string().starts_with("/etc/segd/fuzz.toml"), "{e}");
                assert!(!e.problem.is_empty(), "{e}");
            }
        }
    }
});
