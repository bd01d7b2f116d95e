//! The hardware watchdog (`[cluster] watchdog = "/dev/watchdog"`), SBD-style self-fencing: the
//! node feeds it only while it holds quorum, so a node cut off from the majority — or frozen,
//! where no software lease helps — is reset by the hardware within `watchdog_timeout`. Without
//! the device (none configured, or it cannot be opened) the node falls back to the software
//! lease: it stops its resources itself when it loses quorum.

use std::io::Write as _;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum WatchdogError {
    #[error("opening the watchdog {path}: {source}")]
    Open { path: String, source: std::io::Error },
}

pub struct Watchdog {
    path: String,
    file: std::fs::File,
}

/// WDIOC_SETTIMEOUT = _IOWR('W', 6, int) (linux/watchdog.h).
const WDIOC_SETTIMEOUT: libc::c_ulong = 0xC004_5706;

impl Watchdog {
    /// Open the device at `path` (`{node}` replaced by `node`) and set its timeout. A device
    /// that refuses the timeout keeps its own (logged).
    pub fn open(path: &str, node: &str, timeout: Duration) -> Result<Watchdog, WatchdogError> {
        let path = path.replace("{node}", node);
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create(false)
            .open(&path)
            .map_err(|source| WatchdogError::Open {
                path: path.clone(),
                source,
            })?;
        let mut secs: libc::c_int = timeout.as_secs().clamp(1, 3600) as libc::c_int;
        // SAFETY: a plain ioctl on a file descriptor we own, with a pointer to a live c_int, as
        // linux/watchdog.h defines WDIOC_SETTIMEOUT. No crate wraps this one call.
        let rc = unsafe { libc::ioctl(std::os::fd::AsRawFd::as_raw_fd(&file), WDIOC_SETTIMEOUT as _, &mut secs) };
        if rc != 0 {
            tracing::warn!(%path, error = %std::io::Error::last_os_error(), "the watchdog did not take the timeout; it keeps its own");
        }
        Ok(Watchdog { path, file })
    }

    /// Feed it (any write does). A failed write is logged: the hardware will reset the node.
    pub fn feed(&mut self) {
        if let Err(e) = self.file.write_all(b"\0").and_then(|_| self.file.flush()) {
            tracing::error!(path = %self.path, error = %e, "feeding the watchdog failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn feeds_are_writes_and_a_missing_device_is_a_clear_error() {
        let dir = std::env::temp_dir().join(format!("phalanx-wd-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("wd-{node}");
        std::fs::write(dir.join("wd-n1"), b"").unwrap();
        let mut w = Watchdog::open(path.to_str().unwrap(), "n1", Duration::from_secs(5)).unwrap();
        w.feed();
        w.feed();
        assert_eq!(std::fs::read(dir.join("wd-n1")).unwrap().len(), 2);
        let err = Watchdog::open(path.to_str().unwrap(), "n9", Duration::from_secs(5))
            .err()
            .unwrap();
        assert!(err.to_string().contains("wd-n9"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
