//! Log setup: one line per event on stderr, human-readable by default, JSON
//! with `MYBUDDY_LOG_FORMAT=json` (for Fly log shipping). `MYBUDDY_LOG`
//! takes a tracing filter (default `info`). The gateway's own output does not
//! pass through here: it inherits stdout and stderr untouched.

use tracing_subscriber::EnvFilter;

pub const FORMAT_VAR: &str = "MYBUDDY_LOG_FORMAT";
pub const FILTER_VAR: &str = "MYBUDDY_LOG";

pub fn init() {
    let filter = EnvFilter::try_from_env(FILTER_VAR).unwrap_or_else(|_| EnvFilter::new("info"));
    let json = std::env::var(FORMAT_VAR).is_ok_and(|v| v.eq_ignore_ascii_case("json"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    // A second init (tests calling into the library twice) is harmless.
    let _ = if json {
        builder.json().flatten_event(true).try_init()
    } else {
        builder.compact().try_init()
    };
}
