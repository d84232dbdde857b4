//! Packet filter rules that fence instances in.
//!
//! Docker's `enable_icc=false` on the Cairn network already stops instances from
//! talking to each other. These rules add the rest:
//!
//! * `CAIRN-INPUT` (jumped to from `INPUT` for traffic arriving from the Cairn bridge):
//!   a container may answer connections the host opened (the agent probing or
//!   proxying), but may not open any to the host itself — not the agent, not the
//!   controller, not a Docker TCP socket, nothing listening on the host.
//! * `CAIRN-FORWARD` (jumped to from `DOCKER-USER`): drops traffic to the cloud metadata
//!   address, which would otherwise hand out the host's cloud credentials.
//!
//! The rules live in chains of their own, flushed and refilled on every start, so
//! installing them is idempotent and several agents on one host agree.

use std::process::Command;

/// The cloud metadata address instances must never reach.
pub const METADATA: &str = "169.254.169.254/32";

fn iptables(args: &[&str]) -> Result<(), String> {
    let out = Command::new("iptables")
        .arg("-w")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run iptables: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "iptables {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Creates (or empties) a chain.
fn fresh_chain(name: &str) -> Result<(), String> {
    if iptables(&["-N", name]).is_err() {
        iptables(&["-F", name])?;
    }
    Ok(())
}

/// Jumps from `parent` to `chain` for packets arriving on `bridge`, first in line.
fn ensure_jump(parent: &str, bridge: &str, chain: &str) -> Result<(), String> {
    if iptables(&["-C", parent, "-i", bridge, "-j", chain]).is_err() {
        iptables(&["-I", parent, "1", "-i", bridge, "-j", chain])?;
    }
    Ok(())
}

/// Serialises installs across processes: two agents refilling the same chains at once
/// could interleave into a chain that drops replies before accepting them.
const LOCK: &str = "/run/cairn-isolation.lock";

/// Installs the rules for `bridge`.
pub fn install(bridge: &str) -> Result<(), String> {
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(LOCK)
        .map_err(|e| format!("cannot open {LOCK}: {e}"))?;
    lock.lock()
        .map_err(|e| format!("cannot lock {LOCK}: {e}"))?;
    fresh_chain("CAIRN-INPUT")?;
    iptables(&[
        "-A",
        "CAIRN-INPUT",
        "-m",
        "conntrack",
        "--ctstate",
        "ESTABLISHED,RELATED",
        "-j",
        "RETURN",
    ])?;
    iptables(&["-A", "CAIRN-INPUT", "-j", "DROP"])?;
    ensure_jump("INPUT", bridge, "CAIRN-INPUT")?;

    fresh_chain("CAIRN-FORWARD")?;
    iptables(&["-A", "CAIRN-FORWARD", "-d", METADATA, "-j", "DROP"])?;
    // DOCKER-USER exists once Docker has set up its own rules; create it if not, Docker
    // keeps an existing one.
    let _ = iptables(&["-N", "DOCKER-USER"]);
    ensure_jump("DOCKER-USER", bridge, "CAIRN-FORWARD")?;
    Ok(())
}
