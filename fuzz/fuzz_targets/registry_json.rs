//! Any registry text is read or refused; what is read writes back the same.
#![no_main]
use libfuzzer_sys::fuzz_target;
use mybuddytalk::swarm::registry::Registry;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    if let Ok(r) = serde_json::from_str::<Registry>(s) {
        let text = serde_json::to_string(&r).expect("serializes");
        let back: Registry = serde_json::from_str(&text).expect("reparses");
        assert_eq!(back, r);
    }
});
