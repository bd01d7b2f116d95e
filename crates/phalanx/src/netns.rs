//! Network namespaces as machines: running a program inside one (`ip netns exec`) and listing
//! the processes it holds (`ip netns pids`). The power switch's `netns:` outlets and the
//! harness's clusters placed in namespaces use them; building namespaces is the lab's
//! (`phalanx-lab`), not the product's.

use std::process::Command;

/// A command that runs `program` inside namespace `ns`.
pub fn command_in(ns: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns]).arg(program);
    c
}

/// Every process inside namespace `ns` (none when it does not exist).
pub fn pids(ns: &str) -> Vec<i32> {
    Command::new("ip")
        .args(["netns", "pids", ns])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}
