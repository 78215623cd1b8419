//! `supervisor status`: the swarm's Buddies judged, one table (or JSON).

use clap::Args;

use super::SwarmDirArg;

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub swarm: SwarmDirArg,
    /// Print the report as JSON instead of a table
    #[arg(long)]
    pub json: bool,
}

/// Exit code when some Buddy is not healthy (0: all are).
pub const UNHEALTHY: i32 = 1;
/// Exit code when the registry cannot be read at all.
pub const UNREADABLE: i32 = 2;

pub(super) fn cmd_status(a: StatusArgs) -> i32 {
    // A Magician's gateway holds no token: its supervisor does, and answers
    // through the spell socket with the Machines API's view. (Root, an
    // operator in `fly ssh console`, is not a caller the socket takes: it
    // exports the token, or reads the share alone.)
    let socket = crate::fleet::socket::path_from_env();
    if std::env::var_os("FLY_API_TOKEN").is_none()
        && !nix::unistd::geteuid().is_root()
        && socket.exists()
    {
        let req = crate::fleet::socket::Request::Status { json: a.json };
        return match crate::fleet::socket::cast_to(&socket, &req, &mut std::io::stdout().lock()) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("error: {e}");
                UNREADABLE
            }
        };
    }
    let book = crate::swarm::Paths::new(&a.swarm.swarm_dir).book();
    let reg = match crate::swarm::registry::read(&book) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return UNREADABLE;
        }
    };
    // The Machines API only with a token; the token goes nowhere else.
    let api = match crate::fleet::fly::Client::from_env() {
        Ok(c) => Some(c),
        Err(crate::fleet::fly::FlyError::NoToken) => None,
        Err(e) => {
            eprintln!("error: {e}");
            return UNREADABLE;
        }
    };
    let report = crate::health::status::gather(&reg, api.as_ref(), std::time::SystemTime::now());
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).unwrap_or_default()
        );
    } else {
        print!("{}", crate::health::status::table(&report));
    }
    if report.healthy { 0 } else { UNHEALTHY }
}
