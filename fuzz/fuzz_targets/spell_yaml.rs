//! Any spell text parses or fails with an error; never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    let _ = mybuddytalk::fleet::spell::parse_str(std::path::Path::new("spell.yaml"), s);
});
