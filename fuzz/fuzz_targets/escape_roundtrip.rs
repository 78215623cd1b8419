//! Any value, escaped for the gateway, reads back as exactly itself; parsing
//! any string either fails cleanly or yields pieces.
#![no_main]
use libfuzzer_sys::fuzz_target;
use mybuddytalk::config::secrets;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    let escaped = secrets::escape_for_gateway(s);
    assert_eq!(secrets::gateway_unescape(&escaped).as_deref(), Some(s));
    let _ = secrets::parse(s);
    let _ = secrets::is_var_name(s);
});
