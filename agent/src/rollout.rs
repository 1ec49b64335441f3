//! The agent's side of a rollout: receive a new binary, try it, keep it or roll back.
//!
//! The install layout is the one `cross/install.sh` makes and the systemd unit runs:
//!
//! ```text
//! /opt/moirai/releases/<version>/moirai-agent
//! /opt/moirai/current  -> releases/<version>     (what systemd starts)
//! /opt/moirai/previous -> releases/<older>
//! ```
//!
//! A new binary goes to `releases/<new>/`, beside the running one, and is checked against
//! the offer's size and SHA-256. The old process then steps off the broker and starts the new
//! binary on trial with its own arguments. The trial process proves itself by writing a marker
//! file once it is connected and announced ([`TrialEnv`]). Only then does `current` move (an
//! atomic symlink rename) and the old process exit with [`SWITCHED_EXIT`], so that systemd's
//! restarts run the new release from then on. A trial that dies, or is not online within the
//! offer's time, is killed; `current` never moved, the old process reconnects and reports
//! why. A new binary that cannot even start (wrong architecture, garbage) fails the same way.

use std::ffi::OsString;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use moirai_core::wire::rollout::{UpgradeChunk, UpgradeOffer, CHUNK_BYTES};
use thiserror::Error;

/// Exit status of the old process after a successful switch: the new release runs on (in
/// the trial process, or started again by systemd from `current`).
pub const SWITCHED_EXIT: u8 = 75;

/// Environment variables that put a process on trial.
const TRIAL_MARKER: &str = "MOIRAI_TRIAL_MARKER";
const TRIAL_ROLLOUT: &str = "MOIRAI_TRIAL_ROLLOUT";
const TRIAL_VERSION: &str = "MOIRAI_TRIAL_VERSION";

#[derive(Debug, Error)]
pub enum RolloutError {
    #[error("this agent was not started from an install layout (releases/<version>/ under a root with a `current` link); install it with cross/install.sh")]
    NoInstall,
    #[error("version `{0}` is not a valid release directory name")]
    BadVersion(String),
    #[error("release `{0}` is the one running (current) or the one to fall back to (previous)")]
    InUse(String),
    #[error(
        "offer of {size} bytes in {chunks} chunks is inconsistent (chunks of {CHUNK_BYTES} bytes)"
    )]
    BadOffer { size: u64, chunks: u32 },
    #[error("chunk {got} arrived, expected {expected}")]
    OutOfOrder { got: u32, expected: u32 },
    #[error("the binary is {got} bytes, the offer said {expected}")]
    Size { got: u64, expected: u64 },
    #[error("SHA-256 mismatch: the offer said {expected}, the bytes hash to {got}")]
    Hash { expected: String, got: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> RolloutError + '_ {
    move |source| RolloutError::Io {
        path: path.to_path_buf(),
        source,
    }
}

pub use moirai_core::digest::{hex, sha256};

/// Where releases live.
#[derive(Clone, Debug)]
pub struct Install {
    root: PathBuf,
}

impl Install {
    /// The layout around a running binary: `<root>/releases/<version>/<exe>`.
    pub fn around(exe: &Path) -> Option<Install> {
        let release = exe.parent()?;
        let releases = release.parent()?;
        if releases.file_name()? != "releases" {
            return None;
        }
        Some(Install {
            root: releases.parent()?.to_path_buf(),
        })
    }

    /// The layout around this process's binary (symlinks resolved).
    pub fn of_this_process() -> Option<Install> {
        let exe = std::env::current_exe().ok()?.canonicalize().ok()?;
        Install::around(&exe)
    }

    fn release_dir(&self, version: &str) -> Result<PathBuf, RolloutError> {
        let ok = !version.is_empty()
            && version != "."
            && version != ".."
            && version
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b'+'));
        if !ok {
            return Err(RolloutError::BadVersion(version.to_string()));
        }
        Ok(self.root.join("releases").join(version))
    }

    /// The release a link (`current`, `previous`) points at.
    fn release_of(&self, link: &str) -> Option<String> {
        let target = std::fs::read_link(self.root.join(link)).ok()?;
        Some(target.file_name()?.to_string_lossy().into_owned())
    }

    /// Points `link` (`current` or `previous`) at `target` atomically.
    fn point(&self, link: &str, target: &Path) -> Result<(), RolloutError> {
        let tmp = self.root.join(format!(".{link}.new"));
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(target, &tmp).map_err(io(&tmp))?;
        let dst = self.root.join(link);
        std::fs::rename(&tmp, &dst).map_err(io(&dst))
    }

    /// Makes `release` current and the old current previous.
    fn commit(&self, release: &Path) -> Result<(), RolloutError> {
        let current = self.root.join("current");
        if let Ok(old) = std::fs::read_link(&current) {
            self.point("previous", &old)?;
        }
        let rel = release.strip_prefix(&self.root).unwrap_or(release);
        self.point("current", rel)
    }
}

/// A binary arriving chunk by chunk.
pub struct Receiving {
    pub offer: UpgradeOffer,
    dir: PathBuf,
    path: PathBuf,
    file: File,
    next: u32,
    written: u64,
    hash: moirai_core::digest::Sha256,
}

/// A binary that arrived whole and matches its offer.
#[derive(Debug)]
pub struct Staged {
    pub offer: UpgradeOffer,
    pub binary: PathBuf,
    dir: PathBuf,
}

impl Receiving {
    /// Opens `releases/<version>/moirai-agent` for writing (replacing a failed earlier try).
    pub fn start(
        install: &Install,
        offer: UpgradeOffer,
        exe_name: &str,
    ) -> Result<Self, RolloutError> {
        if offer.chunks != moirai_core::wire::rollout::chunk_count(offer.size) {
            return Err(RolloutError::BadOffer {
                size: offer.size,
                chunks: offer.chunks,
            });
        }
        let dir = install.release_dir(offer.version.as_str())?;
        // Never write over, or later remove, a release that runs or that we fall back to.
        for link in ["current", "previous"] {
            if install.release_of(link).as_deref() == Some(offer.version.as_str()) {
                return Err(RolloutError::InUse(offer.version.to_string()));
            }
        }
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        let path = dir.join(format!("{exe_name}.part"));
        let file = File::create(&path).map_err(io(&path))?;
        Ok(Self {
            offer,
            dir,
            path,
            file,
            next: 0,
            written: 0,
            hash: moirai_core::digest::Sha256::new(),
        })
    }

    /// Takes the next chunk; `Some` once the last one arrived and the whole checks out.
    pub fn chunk(
        &mut self,
        c: &UpgradeChunk,
        exe_name: &str,
    ) -> Result<Option<Staged>, RolloutError> {
        if c.index != self.next {
            return Err(RolloutError::OutOfOrder {
                got: c.index,
                expected: self.next,
            });
        }
        self.written += c.bytes.len() as u64;
        if self.written > self.offer.size {
            return Err(RolloutError::Size {
                got: self.written,
                expected: self.offer.size,
            });
        }
        self.file.write_all(&c.bytes).map_err(io(&self.path))?;
        self.hash.update(&c.bytes);
        self.next += 1;
        if self.next < self.offer.chunks {
            return Ok(None);
        }
        if self.written != self.offer.size {
            return Err(RolloutError::Size {
                got: self.written,
                expected: self.offer.size,
            });
        }
        let got = self.hash.clone().finish();
        if got.as_ref() != self.offer.sha256 {
            return Err(RolloutError::Hash {
                expected: hex(&self.offer.sha256),
                got: hex(got.as_ref()),
            });
        }
        self.file.sync_all().map_err(io(&self.path))?;
        let binary = self.dir.join(exe_name);
        std::fs::rename(&self.path, &binary).map_err(io(&binary))?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&binary, std::fs::Permissions::from_mode(0o755))
            .map_err(io(&binary))?;
        Ok(Some(Staged {
            offer: self.offer.clone(),
            binary,
            dir: self.dir.clone(),
        }))
    }

    /// Removes what arrived so far (after a refusal).
    pub fn abandon(self) {
        let _ = std::fs::remove_file(&self.path);
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// How a trial ended.
#[derive(Debug)]
pub enum TrialOutcome {
    /// The new binary is online (its process keeps running) and `current` points at it.
    Switched { pid: u32 },
    /// The new binary was stopped; nothing changed.
    RolledBack { reason: String },
}

/// Starts `staged` with `args` (this process's arguments) on trial and waits for it to come
/// online. Call it after leaving the broker, so the two never hold the same client id.
pub fn trial(install: &Install, staged: Staged, args: &[OsString]) -> TrialOutcome {
    let marker = staged.dir.join(format!(".online-{}", staged.offer.rollout));
    let _ = std::fs::remove_file(&marker);
    let within = Duration::from_secs(u64::from(staged.offer.online_within_s.max(1)));
    let child = Command::new(&staged.binary)
        .args(args)
        .env(TRIAL_MARKER, &marker)
        .env(TRIAL_ROLLOUT, staged.offer.rollout.to_string())
        .env(TRIAL_VERSION, staged.offer.version.as_str())
        .spawn();
    let outcome = match child {
        Err(e) => TrialOutcome::RolledBack {
            reason: format!("cannot start {}: {e}", staged.binary.display()),
        },
        Ok(child) => watch(child, &marker, within),
    };
    match outcome {
        TrialOutcome::Switched { pid } => match install.commit(&staged.dir) {
            Ok(()) => TrialOutcome::Switched { pid },
            Err(e) => TrialOutcome::RolledBack {
                reason: format!("online, but the switch failed: {e}"),
            },
        },
        rolled_back => {
            let _ = std::fs::remove_dir_all(&staged.dir);
            rolled_back
        }
    }
}

fn watch(mut child: Child, marker: &Path, within: Duration) -> TrialOutcome {
    let t0 = Instant::now();
    loop {
        if marker.exists() {
            let _ = std::fs::remove_file(marker);
            return TrialOutcome::Switched { pid: child.id() };
        }
        if let Ok(Some(status)) = child.try_wait() {
            return TrialOutcome::RolledBack {
                reason: format!("the new binary exited ({status}) before coming online"),
            };
        }
        if t0.elapsed() >= within {
            let _ = child.kill();
            let _ = child.wait();
            return TrialOutcome::RolledBack {
                reason: format!(
                    "the new binary was not online within {} s",
                    within.as_secs()
                ),
            };
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// What the MQTT loop needs to take part in rollouts.
#[derive(Clone, Debug, Default)]
pub struct RolloutSetup {
    /// Where releases go; `None` when not run from an install layout (offers are refused).
    pub install: Option<Install>,
    /// File name of the agent binary inside a release.
    pub exe_name: String,
    /// Set when this process is on trial: report online once announced.
    pub trial: Option<TrialEnv>,
    /// A status to publish once announced (a rollback that just happened).
    pub report: Option<moirai_core::wire::rollout::UpgradeStatus>,
}

/// What a process on trial was told by its predecessor.
#[derive(Clone, Debug)]
pub struct TrialEnv {
    pub marker: PathBuf,
    pub rollout: u64,
    pub version: String,
}

impl TrialEnv {
    /// Read from the environment; `None` for a process not on trial.
    pub fn from_env() -> Option<TrialEnv> {
        Some(TrialEnv {
            marker: std::env::var_os(TRIAL_MARKER)?.into(),
            rollout: std::env::var(TRIAL_ROLLOUT).ok()?.parse().ok()?,
            version: std::env::var(TRIAL_VERSION).ok()?,
        })
    }

    /// Tells the predecessor that this process is online.
    pub fn report_online(&self) -> std::io::Result<()> {
        File::create(&self.marker).map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use moirai_core::wire::rollout::chunk_count;
    use moirai_core::wire::truncated;

    fn layout(tag: &str) -> (PathBuf, Install) {
        let root =
            std::env::temp_dir().join(format!("moirai-rollout-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("releases/0.1.0")).unwrap();
        std::os::unix::fs::symlink("releases/0.1.0", root.join("current")).unwrap();
        let exe = root.join("releases/0.1.0/moirai-agent");
        std::fs::write(&exe, b"old").unwrap();
        let install = Install::around(&exe).expect("layout");
        (root, install)
    }

    fn offer(bytes: &[u8], version: &str, within: u32) -> UpgradeOffer {
        UpgradeOffer {
            rollout: 7,
            version: truncated(version),
            size: bytes.len() as u64,
            sha256: sha256(bytes),
            chunks: chunk_count(bytes.len() as u64),
            online_within_s: within,
        }
    }

    fn send(install: &Install, bytes: &[u8], o: UpgradeOffer) -> Result<Staged, RolloutError> {
        let mut r = Receiving::start(install, o, "moirai-agent")?;
        let mut staged = None;
        for (i, part) in bytes.chunks(CHUNK_BYTES).enumerate() {
            let c = UpgradeChunk {
                rollout: 7,
                index: i as u32,
                bytes: part.to_vec(),
            };
            staged = r.chunk(&c, "moirai-agent")?;
        }
        Ok(staged.expect("last chunk stages"))
    }

    #[test]
    fn a_binary_is_staged_only_whole_and_matching_its_hash() {
        let (root, install) = layout("stage");
        let bytes: Vec<u8> = (0..(CHUNK_BYTES * 2 + 100)).map(|i| i as u8).collect();
        let staged = send(&install, &bytes, offer(&bytes, "0.2.0", 5)).unwrap();
        assert_eq!(std::fs::read(&staged.binary).unwrap(), bytes);

        let mut lying = offer(&bytes, "0.2.1", 5);
        lying.sha256[0] ^= 1;
        let err = send(&install, &bytes, lying).unwrap_err();
        assert!(matches!(err, RolloutError::Hash { .. }), "{err}");

        let mut r = Receiving::start(&install, offer(&bytes, "0.2.2", 5), "moirai-agent").unwrap();
        let skipped = UpgradeChunk {
            rollout: 7,
            index: 1,
            bytes: vec![0; 10],
        };
        assert!(matches!(
            r.chunk(&skipped, "moirai-agent"),
            Err(RolloutError::OutOfOrder {
                got: 1,
                expected: 0
            })
        ));
        assert!(matches!(
            Receiving::start(&install, offer(&bytes, "../../etc", 5), "moirai-agent"),
            Err(RolloutError::BadVersion(_))
        ));
        assert!(matches!(
            Receiving::start(&install, offer(&bytes, "0.1.0", 5), "moirai-agent"),
            Err(RolloutError::InUse(_))
        ));
        assert_eq!(
            std::fs::read(root.join("current/moirai-agent")).unwrap(),
            b"old"
        );
        let _ = std::fs::remove_dir_all(root);
    }

    #[test]
    fn a_binary_that_never_comes_online_is_rolled_back_and_current_stays() {
        let (root, install) = layout("broken");
        let script = b"#!/bin/sh\nsleep 30\n";
        let staged = send(&install, script, offer(script, "0.2.0", 1)).unwrap();
        let t0 = Instant::now();
        match trial(&install, staged, &[]) {
            TrialOutcome::RolledBack { reason } => {
                assert!(reason.contains("not online"), "{reason}")
            }
            other => panic!("{other:?}"),
        }
        assert!(t0.elapsed() < Duration::from_secs(5));
        assert_eq!(
            std::fs::read_link(root.join("current")).unwrap(),
            Path::new("releases/0.1.0")
        );
        assert!(
            !root.join("releases/0.2.0").exists(),
            "the failed release is removed"
        );

        let crashing = b"#!/bin/sh\nexit 3\n";
        let staged = send(&install, crashing, offer(crashing, "0.2.1", 10)).unwrap();
        match trial(&install, staged, &[]) {
            TrialOutcome::RolledBack { reason } => assert!(reason.contains("exited"), "{reason}"),
            other => panic!("{other:?}"),
        }
        let garbage = b"\x7fELF but not really";
        let staged = send(&install, garbage, offer(garbage, "0.2.2", 10)).unwrap();
        assert!(matches!(
            trial(&install, staged, &[]),
            TrialOutcome::RolledBack { .. }
        ));
        let _ = std::fs::remove_dir_all(root);
    }

    #[test]
    fn a_binary_that_comes_online_becomes_current() {
        let (root, install) = layout("good");
        // Comes online the way a real agent does: by touching the marker it was given.
        let script = b"#!/bin/sh\ntouch \"$MOIRAI_TRIAL_MARKER\"\nsleep 2\n";
        let staged = send(&install, script, offer(script, "0.3.0", 10)).unwrap();
        match trial(&install, staged, &[]) {
            TrialOutcome::Switched { .. } => {}
            other => panic!("{other:?}"),
        }
        assert_eq!(
            std::fs::read_link(root.join("current")).unwrap(),
            Path::new("releases/0.3.0")
        );
        assert_eq!(
            std::fs::read_link(root.join("previous")).unwrap(),
            Path::new("releases/0.1.0")
        );
        let _ = std::fs::remove_dir_all(root);
    }
}
