//! `standins`: the Telegram and Gemini stand-ins as a process, for offline
//! local runs (`scripts/run-local BUDDY --offline`, `scripts/talk`) and the
//! bench. `serve` writes what a Buddy needs to reach them into DIR:
//! `ca.pem` (for NODE_EXTRA_CA_CERTS), `overlay.json` (for
//! `supervisor run --config-overlay`) and `control.sock`; the other commands
//! drive a running `serve` through that socket.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Parser, Subcommand};
use mybuddy_standins::control;
use serde_json::{Value, json};

#[derive(Parser)]
#[command(
    version,
    about = "Loopback stand-ins for Telegram and Gemini (tests and offline runs only)"
)]
struct Cli {
    /// Where `serve` keeps ca.pem, overlay.json and control.sock
    #[arg(long, global = true, default_value = "/var/tmp/mybuddytalk/standins")]
    dir: PathBuf,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve both stand-ins on 127.0.0.1 until killed
    Serve {
        /// The ${VAR} the overlay's Gemini apiKey names
        #[arg(long, default_value = "${GEMINI_API_KEY}")]
        api_key_ref: String,
    },
    /// Send the bot a Human's message and print the replies as they arrive
    Talk {
        /// The Human's Telegram user id
        #[arg(long)]
        from: i64,
        #[arg(long, default_value = "Human")]
        name: String,
        /// Seconds to wait for the first reply
        #[arg(long, default_value_t = 120)]
        timeout: u64,
        /// Exit after the first reply instead of waiting for more
        #[arg(long)]
        first: bool,
        text: String,
    },
    /// Append steps to the model's script (a JSON array of steps)
    Script { steps: String },
    /// Switch the Telegram API down (refused or reset) or up
    Telegram {
        #[arg(value_parser = ["down", "reset", "up"])]
        state: String,
    },
    /// Print every Bot API call and model request seen so far (JSON)
    Seen,
}

fn main() {
    let cli = Cli::parse();
    if let Err(e) = run(cli) {
        eprintln!("standins: {e:#}");
        std::process::exit(1);
    }
}

fn sock(dir: &Path) -> PathBuf {
    dir.join("control.sock")
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.cmd {
        Cmd::Serve { api_key_ref } => serve(&cli.dir, &api_key_ref),
        Cmd::Talk {
            from,
            name,
            timeout,
            first,
            text,
        } => talk(&cli.dir, from, &name, timeout, first, &text),
        Cmd::Script { steps } => {
            let steps: Value = serde_json::from_str(&steps).context("steps are a JSON array")?;
            let v = control::call(&sock(&cli.dir), "POST", "/gemini/script", Some(&steps))?;
            println!("{v}");
            Ok(())
        }
        Cmd::Telegram { state } => {
            let (path, body) = match state.as_str() {
                "up" => ("/telegram/up", json!({})),
                "reset" => ("/telegram/down", json!({"mode": "reset"})),
                _ => ("/telegram/down", json!({"mode": "refused"})),
            };
            println!(
                "{}",
                control::call(&sock(&cli.dir), "POST", path, Some(&body))?
            );
            Ok(())
        }
        Cmd::Seen => {
            let s = sock(&cli.dir);
            let calls = control::call(&s, "GET", "/telegram/calls", None)?;
            let seen = control::call(&s, "GET", "/gemini/seen", None)?;
            println!("{}", json!({"telegram": calls, "gemini": seen}));
            Ok(())
        }
    }
}

fn serve(dir: &Path, api_key_ref: &str) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    // Started in the background of a script (run-local --offline), which
    // leaves SIGINT ignored: take the default back so Ctrl-C ends us too,
    // and end with the process that started us (the supervisor, once the
    // script has exec'd it) rather than outlive it holding the namespace.
    // SAFETY: restoring a default disposition installs no handler.
    unsafe {
        nix::sys::signal::signal(
            nix::sys::signal::Signal::SIGINT,
            nix::sys::signal::SigHandler::SigDfl,
        )?;
    }
    nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGTERM)?;
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    // The gateway's user reads ca.pem and overlay.json; nothing here is secret.
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
    let s = mybuddy_standins::Standins::start(None, Default::default(), Some(&sock(dir)))?;
    let write = |name: &str, text: &str| -> anyhow::Result<()> {
        let p = dir.join(name);
        let tmp = dir.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, text)?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o644))?;
        std::fs::rename(&tmp, &p).with_context(|| format!("write {}", p.display()))
    };
    write("ca.pem", &s.ca_pem)?;
    write(
        "overlay.json",
        &serde_json::to_string_pretty(&s.overlay(api_key_ref))?,
    )?;
    println!(
        "standins: Telegram proxy {} and Gemini {} on loopback; control {}",
        s.proxy_url(),
        s.gemini_base_url(),
        sock(dir).display()
    );
    std::io::stdout().flush()?;
    loop {
        std::thread::park();
    }
}

fn talk(
    dir: &Path,
    from: i64,
    name: &str,
    timeout: u64,
    first: bool,
    text: &str,
) -> anyhow::Result<()> {
    let s = sock(dir);
    let posted = control::call(
        &s,
        "POST",
        "/telegram/messages",
        Some(&json!({"from": from, "name": name, "text": text})),
    )?;
    let mut since = posted["since"].as_u64().unwrap_or(0);
    let start = Instant::now();
    let mut replied = false;
    // Replies can come in several messages: after the first, keep
    // printing what arrives within a few quiet seconds.
    loop {
        let wait = if replied {
            5
        } else {
            timeout.saturating_sub(start.elapsed().as_secs()).max(1)
        };
        let path = format!("/telegram/calls?since={since}&chat={from}&wait={wait}");
        let calls = control::call(&s, "GET", &path, None)?;
        let calls = calls.as_array().cloned().unwrap_or_default();
        if calls.is_empty() {
            break;
        }
        for c in &calls {
            since = since.max(c["seq"].as_u64().unwrap_or(0) + 1);
            let text = c["params"]["text"].as_str();
            if let Some(t) = text.filter(|t| !mybuddy_standins::telegram::is_status(t)) {
                if !replied {
                    println!("({:.1} s)", start.elapsed().as_secs_f64());
                }
                replied = true;
                println!("{t}");
                std::io::stdout().flush()?;
            }
        }
        if replied && first {
            break;
        }
        if start.elapsed() > Duration::from_secs(timeout + 30) {
            break;
        }
    }
    if !replied {
        anyhow::bail!(
            "no reply within {timeout} s (is the Buddy up? its log shows the turn; the stand-in model answers at once)"
        );
    }
    Ok(())
}
