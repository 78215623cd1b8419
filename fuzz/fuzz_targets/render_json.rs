//! Template + personal config (split at the first NUL) through parse, merge,
//! policy and substitution: never a panic, and whatever renders is JSON the
//! gateway reads literally (no reference left unescaped).
#![no_main]
use std::path::Path;

use libfuzzer_sys::fuzz_target;
use mybuddytalk::buddy::{Channels, Identity, Role, Status};
use mybuddytalk::config::secrets::{self, Resolved};
use mybuddytalk::config::{jsonfile, policy};
use serde_json::Value;

fn strings(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::String(s) => out.push(s.clone()),
        Value::Array(a) => a.iter().for_each(|x| strings(x, out)),
        Value::Object(m) => m.values().for_each(|x| strings(x, out)),
        _ => {}
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let (a, b) = text.split_once('\0').unwrap_or((text, "{}"));
    let (Ok(mut merged), Ok(personal)) = (
        jsonfile::parse_json(Path::new("template.json"), a),
        jsonfile::parse_json(Path::new("config.json"), b),
    ) else {
        return;
    };
    json_patch::merge(&mut merged, &personal);
    let identity = Identity {
        human: "Roel".into(),
        name: "Emrys".into(),
        role: Role::Magician,
        channels: Channels { telegram: true, whatsapp: true },
        status: Status::Active,
    };
    let _ = policy::check(&merged, &identity, &|_| "config.json".into());
    let lookup = |name: &str| -> Option<Resolved> {
        (name.len() % 3 != 0).then(|| Resolved { value: format!("v\"a\\l${{{name}}}$${{X}}\n"), secret: true })
    };
    if let Ok(out) = secrets::substitute(&merged, &lookup, &|_| "config.json".into()) {
        let text = serde_json::to_string(&out.rendered).expect("serializes");
        let back: Value = serde_json::from_str(&text).expect("reparses");
        assert_eq!(back, out.rendered);
        let mut all = Vec::new();
        strings(&out.rendered, &mut all);
        for s in all {
            assert!(secrets::gateway_unescape(&s).is_some(), "the gateway would expand {s:?}");
        }
    }
});
