//! Any registry text (a gateway can write every byte of it) is read entry by
//! entry or refused as a whole, never a panic; every entry it keeps has a
//! key and Machine id that are single, harmless Machines API path segments,
//! and what it keeps reads back the same.
#![no_main]
use libfuzzer_sys::fuzz_target;
use mybuddytalk::fleet::fly::seg;
use mybuddytalk::swarm::registry::{self, Registry};

fuzz_target!(|data: &[u8]| {
    let Ok((r, _rejected)) = registry::parse(data) else {
        return;
    };
    for (key, e) in &r.buddies {
        // Kept entries need no encoding at all: nothing in them is a path.
        assert_eq!(&seg(key), key);
        assert!(!key.contains('/') && key != "." && key != "..");
        if let Some(m) = &e.machine {
            assert_eq!(&seg(m), m);
            assert!(registry::MACHINE_ID.is_match(m));
        }
        assert_eq!(key, &e.id.to_lowercase());
    }
    let text = serde_json::to_string(&r).expect("serializes");
    let (back, rejected) = registry::parse(text.as_bytes()).expect("reparses");
    assert!(rejected.is_empty());
    assert_eq!(back, r);
    let _: Registry = back;
});
