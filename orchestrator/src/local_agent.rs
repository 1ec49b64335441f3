//! `moirai-agent` processes this machine starts for itself (`moirai demo`, `moirai run`):
//! where the binary is, and a handle that stops the process when dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// The agent binary: `given`, or `moirai-agent` next to the running executable. `Err`
/// names the path that is not there.
pub fn agent_binary(given: Option<&Path>) -> Result<PathBuf, PathBuf> {
    let path = match given {
        Some(p) => p.to_path_buf(),
        None => std::env::current_exe()
            .map(|e| e.with_file_name(format!("moirai-agent{}", std::env::consts::EXE_SUFFIX)))
            .unwrap_or_else(|_| PathBuf::from("moirai-agent")),
    };
    if path.is_file() {
        Ok(path)
    } else {
        Err(path)
    }
}

/// A child agent process, stopped on drop: SIGTERM so that it says goodbye (its death,
/// then a clean disconnect), SIGKILL if it has not exited within 2 s.
pub struct AgentProcess {
    child: Child,
}

impl AgentProcess {
    pub fn new(child: Child) -> Self {
        Self { child }
    }

    /// SIGKILL: no goodbye; the broker publishes the agent's Last Will when the connection
    /// drops.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn id(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        // Already reaped (killed): its pid may belong to another process by now.
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(2) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
