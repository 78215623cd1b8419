//! Who the gateway runs as: the user, its primary group, and exactly the
//! supplementary groups its role allows.
//!
//! Names come from `/etc/passwd` and `/etc/group` (read directly: a static
//! glibc binary cannot load NSS modules reliably). Where a name does not exist
//! — a developer's machine, CI — the documented numeric ids serve, so local
//! runs and tests need no extra accounts.

use std::fs;
use std::path::Path;

use nix::unistd::{Gid, Uid};

use crate::buddy::Role;

/// The gateway user of every Buddy image.
pub const GATEWAY_USER: &str = "buddy";
pub const GATEWAY_UID: u32 = 10001;
pub const GATEWAY_GID: u32 = 10001;
/// Every gateway is in this group: MyBuddyBook is shared read/write.
pub const BOOK_GROUP: &str = "mybuddybook";
pub const BOOK_GID: u32 = 10100;
/// Only Magicians' gateways are in this group: the SpellBook.
pub const MAGICIANS_GROUP: &str = "magicians";
pub const MAGICIANS_GID: u32 = 10101;

/// A resolved identity for the gateway process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    pub user: String,
    pub uid: Uid,
    pub gid: Gid,
    /// Supplementary groups, exactly these and no others.
    pub groups: Vec<Gid>,
}

#[derive(Debug, thiserror::Error)]
pub enum UserError {
    #[error("--user {spec:?}: {why} (use a user name, UID or UID:GID)")]
    Spec { spec: String, why: String },
}

/// `/etc/passwd`-style lookup: name -> (uid, gid).
fn passwd_lookup(root: &Path, name: &str) -> Option<(u32, u32)> {
    let text = fs::read_to_string(root.join("etc/passwd")).ok()?;
    text.lines().find_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        (f.len() >= 4 && f[0] == name).then(|| Some((f[2].parse().ok()?, f[3].parse().ok()?)))?
    })
}

fn passwd_name_of(root: &Path, uid: u32) -> Option<String> {
    let text = fs::read_to_string(root.join("etc/passwd")).ok()?;
    text.lines().find_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        (f.len() >= 3 && f[2].parse() == Ok(uid)).then(|| f[0].to_string())
    })
}

fn group_lookup(root: &Path, name: &str) -> Option<u32> {
    let text = fs::read_to_string(root.join("etc/group")).ok()?;
    text.lines().find_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        (f.len() >= 3 && f[0] == name).then(|| f[2].parse().ok())?
    })
}

/// The gid of a swarm group: from `/etc/group` if it exists, else the
/// documented number.
pub fn swarm_gid(name: &str) -> Gid {
    swarm_gid_in(Path::new("/"), name)
}

pub fn swarm_gid_in(root: &Path, name: &str) -> Gid {
    let fallback = match name {
        MAGICIANS_GROUP => MAGICIANS_GID,
        _ => BOOK_GID,
    };
    Gid::from_raw(group_lookup(root, name).unwrap_or(fallback))
}

/// The supplementary groups a role allows.
pub fn role_groups(role: Role) -> Vec<Gid> {
    let mut g = vec![swarm_gid(BOOK_GROUP)];
    if role == Role::Magician {
        g.push(swarm_gid(MAGICIANS_GROUP));
    }
    g
}

/// Resolves `--user` (`name`, `uid` or `uid:gid`) for `role`.
pub fn resolve(spec: &str, role: Role) -> Result<Credentials, UserError> {
    resolve_in(Path::new("/"), spec, role)
}

pub fn resolve_in(root: &Path, spec: &str, role: Role) -> Result<Credentials, UserError> {
    let err = |why: &str| UserError::Spec {
        spec: spec.to_string(),
        why: why.to_string(),
    };
    let (user_part, group_part) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    if user_part.is_empty() {
        return Err(err("empty user"));
    }
    let (user, uid, mut gid) = if let Ok(n) = user_part.parse::<u32>() {
        let name = passwd_name_of(root, n).unwrap_or_else(|| n.to_string());
        let gid = passwd_lookup(root, &name).map(|(_, g)| g).unwrap_or(n);
        (name, n, gid)
    } else if let Some((u, g)) = passwd_lookup(root, user_part) {
        (user_part.to_string(), u, g)
    } else if user_part == GATEWAY_USER {
        (user_part.to_string(), GATEWAY_UID, GATEWAY_GID)
    } else {
        return Err(err("no such user in /etc/passwd"));
    };
    if let Some(g) = group_part {
        gid = match g.parse::<u32>() {
            Ok(n) => n,
            Err(_) => group_lookup(root, g).ok_or_else(|| err("no such group in /etc/group"))?,
        };
    }
    if uid == 0 {
        return Err(err("the gateway must not run as root"));
    }
    let mut groups = vec![swarm_gid_in(root, BOOK_GROUP)];
    if role == Role::Magician {
        groups.push(swarm_gid_in(root, MAGICIANS_GROUP));
    }
    Ok(Credentials {
        user,
        uid: Uid::from_raw(uid),
        gid: Gid::from_raw(gid),
        groups,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numeric_and_named_users() {
        let root = tempfile::tempdir().unwrap();
        fs::create_dir_all(root.path().join("etc")).unwrap();
        fs::write(
            root.path().join("etc/passwd"),
            "root:x:0:0::/root:/bin/sh\nbuddy:x:2000:2001::/data:/bin/sh\n",
        )
        .unwrap();
        fs::write(
            root.path().join("etc/group"),
            "mybuddybook:x:3000:\nmagicians:x:3001:\nstaff:x:50:\n",
        )
        .unwrap();
        let c = resolve_in(root.path(), "buddy", Role::Magician).unwrap();
        assert_eq!((c.uid.as_raw(), c.gid.as_raw()), (2000, 2001));
        assert_eq!(c.groups, vec![Gid::from_raw(3000), Gid::from_raw(3001)]);
        let c = resolve_in(root.path(), "65534:65534", Role::Buddy).unwrap();
        assert_eq!((c.uid.as_raw(), c.gid.as_raw()), (65534, 65534));
        assert_eq!(c.groups, vec![Gid::from_raw(3000)]);
        let c = resolve_in(root.path(), "2000:staff", Role::Buddy).unwrap();
        assert_eq!((c.user.as_str(), c.gid.as_raw()), ("buddy", 50));
        assert!(resolve_in(root.path(), "root", Role::Buddy).is_err());
        assert!(resolve_in(root.path(), "0", Role::Buddy).is_err());
        assert!(resolve_in(root.path(), "nobody-here", Role::Buddy).is_err());
        // Without the accounts, the documented ids serve.
        let empty = tempfile::tempdir().unwrap();
        let c = resolve_in(empty.path(), "buddy", Role::Magician).unwrap();
        assert_eq!((c.uid.as_raw(), c.gid.as_raw()), (GATEWAY_UID, GATEWAY_GID));
        assert_eq!(
            c.groups,
            vec![Gid::from_raw(BOOK_GID), Gid::from_raw(MAGICIANS_GID)]
        );
    }
}
