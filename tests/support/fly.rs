//! A recording stand-in for the `fly` CLI, first on PATH.

use std::fs;
use std::path::{Path, PathBuf};

use super::*;

/// A recording stand-in for `fly`, first on PATH: every call is appended as
/// one JSON array of its arguments to `calls`, the stdin of `secrets import`
/// to `stdin`. `apps list`, `volumes list`, `secrets list` and `ips list`
/// answer with the JSON in `apps.json`, `volumes.json`, `secrets.json`,
/// `ips.json` (default `[]`); a call
/// whose arguments start with a line of `fail` exits 1.
pub struct FakeFly {
    pub dir: PathBuf,
}

impl FakeFly {
    pub fn new(parent: &Path) -> FakeFly {
        let dir = parent.join("fakefly");
        fs::create_dir_all(dir.join("bin")).unwrap();
        let body = format!(
            r#"d={d}
python3 - "$@" >> "$d/calls" <<'PY'
import json, sys
print(json.dumps(sys.argv[1:]))
PY
args="$*"
if [ -f "$d/fail" ]; then
  while read -r prefix; do
    case "$args" in "$prefix"*) echo "fly: simulated failure of: $prefix" >&2; exit 1;; esac
  done < "$d/fail"
fi
case "$args" in
  "apps list"*) cat "$d/apps.json" 2>/dev/null || echo '[]' ;;
  "volumes list"*) cat "$d/volumes.json" 2>/dev/null || echo '[]' ;;
  "secrets list"*) cat "$d/secrets.json" 2>/dev/null || echo '[]' ;;
  "ips list"*) cat "$d/ips.json" 2>/dev/null || echo '[]' ;;
  "secrets import"*) cat >> "$d/stdin" ;;
esac
exit 0"#,
            d = dir.display()
        );
        script(&dir.join("bin"), "fly", &body);
        FakeFly { dir }
    }

    pub fn path_env(&self) -> String {
        format!(
            "{}:{}",
            self.dir.join("bin").display(),
            std::env::var("PATH").unwrap_or_default()
        )
    }

    pub fn calls(&self) -> Vec<Vec<String>> {
        fs::read_to_string(self.dir.join("calls"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    pub fn stdin(&self) -> String {
        fs::read_to_string(self.dir.join("stdin")).unwrap_or_default()
    }

    pub fn answer(&self, what: &str, json: &str) {
        fs::write(self.dir.join(format!("{what}.json")), json).unwrap();
    }

    pub fn fail_on(&self, prefix: &str) {
        fs::write(self.dir.join("fail"), format!("{prefix}\n")).unwrap();
    }
}

/// The Fly Machines API stand-in, serving in `ns`, accepting only `token`
/// (as flyctl sends it: `FlyV1 <token>` for a macaroon), or any with None.
pub fn fly_api(ns: &NetNs, token: Option<&str>) -> mybuddy_standins::FlyStandin {
    let auth = token.map(mybuddytalk::fleet::fly::authorization);
    mybuddy_standins::FlyStandin::start(Some(Path::new(&ns.path())), auth.as_deref())
        .expect("start the Fly Machines API stand-in")
}

/// The Machines API calls a Buddy's first deploy makes, in order (method and
/// path, no query): the app looked up and made, its Flycast address, its
/// secrets, its volume looked for and made, no Machine of its running yet,
/// the Machine made, waited for, its checks read.
pub fn first_deploy_calls(app: &str, machine: &str) -> Vec<String> {
    vec![
        format!("GET /v1/apps/{app}"),
        "POST /v1/apps".into(),
        format!("POST /v1/apps/{app}/ip_assignments"),
        format!("POST /v1/apps/{app}/secrets"),
        format!("GET /v1/apps/{app}/volumes"),
        format!("POST /v1/apps/{app}/volumes"),
        format!("GET /v1/apps/{app}/machines"),
        format!("POST /v1/apps/{app}/machines"),
        format!("GET /v1/apps/{app}/machines/{machine}/wait"),
        format!("GET /v1/apps/{app}/machines/{machine}"),
    ]
}

/// The calls (method and path) whose body carried `value`.
pub fn calls_carrying(api: &mybuddy_standins::FlyApi, value: &str) -> Vec<String> {
    api.calls()
        .iter()
        .filter(|c| c.body.to_string().contains(value))
        .map(|c| c.line())
        .collect()
}
