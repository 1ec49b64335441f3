//! Processes for the fleet tests: the orchestrator, agents and mosquitto as child processes
//! whose output lines are collected, free ports, scratch directories.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(".."))
}

/// A TCP port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free local port")
}

/// A fresh scratch directory under the system temp dir.
pub fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "moirai-{name}-{}-{}",
        std::process::id(),
        Instant::now().elapsed().as_nanos()
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("scratch dir");
    d
}

/// A child process whose stdout and stderr lines are collected.
pub struct Proc {
    pub name: String,
    child: Child,
    rx: Receiver<String>,
    /// Every line seen so far, stdout and stderr interleaved as they came.
    pub seen: Vec<String>,
}

impl Proc {
    pub fn spawn(name: &str, mut cmd: Command) -> Proc {
        cmd.stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .stdin(Stdio::null());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name} ({cmd:?}): {e}"));
        let (tx, rx) = channel();
        if let Some(out) = child.stdout.take() {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    let _ = tx.send(line);
                }
            });
        }
        if let Some(err) = child.stderr.take() {
            std::thread::spawn(move || {
                for line in BufReader::new(err).lines().map_while(Result::ok) {
                    let _ = tx.send(format!("[stderr] {line}"));
                }
            });
        }
        Proc {
            name: name.to_string(),
            child,
            rx,
            seen: Vec::new(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Collects what arrived without waiting.
    pub fn drain(&mut self) {
        while let Ok(l) = self.rx.try_recv() {
            self.seen.push(l);
        }
    }

    /// Waits for a line matching `pred` (including lines already seen after `from`); returns
    /// its index in `seen`.
    pub fn wait_for_from(
        &mut self,
        from: usize,
        timeout: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> Option<usize> {
        self.drain();
        if let Some(i) = self.seen.iter().skip(from).position(|l| pred(l)) {
            return Some(from + i);
        }
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(l) => {
                    let hit = pred(&l);
                    self.seen.push(l);
                    if hit {
                        return Some(self.seen.len() - 1);
                    }
                }
                Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => {
                    return None
                }
            }
        }
    }

    /// Like [`Proc::wait_for_from`], panicking with the output so far when nothing matches.
    pub fn expect(
        &mut self,
        from: usize,
        timeout: Duration,
        what: &str,
        pred: impl Fn(&str) -> bool,
    ) -> usize {
        match self.wait_for_from(from, timeout, pred) {
            Some(i) => i,
            None => {
                let tail = self.tail(80);
                panic!(
                    "{}: no line with {what} within {timeout:?}; output:\n{tail}",
                    self.name
                )
            }
        }
    }

    /// The last `n` lines seen.
    pub fn tail(&mut self, n: usize) -> String {
        self.drain();
        let k = self.seen.len().saturating_sub(n);
        self.seen[k..].join("\n")
    }

    /// Lines after `from` matching `pred`.
    pub fn count_from(&mut self, from: usize, pred: impl Fn(&str) -> bool) -> usize {
        self.drain();
        self.seen.iter().skip(from).filter(|l| pred(l)).count()
    }

    /// Waits up to `timeout` for the process to exit on its own.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let t0 = Instant::now();
        while t0.elapsed() < timeout {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// SIGKILL: no goodbye, no Last Will of its own making.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then wait up to `grace` before SIGKILL.
    pub fn terminate(&mut self, grace: Duration) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let t0 = Instant::now();
        while t0.elapsed() < grace {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill();
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.is_running() {
            self.kill();
        }
    }
}

/// Where mosquitto is, if installed (Debian puts it in /usr/sbin).
pub fn mosquitto_binary() -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    dirs.extend(["/usr/sbin", "/usr/local/sbin", "/sbin"].map(PathBuf::from));
    dirs.into_iter()
        .map(|d| d.join("mosquitto"))
        .find(|p| p.is_file())
}

/// Starts mosquitto on a free local port; `None` when it is not installed.
pub fn mosquitto() -> Option<(Proc, u16)> {
    let bin = mosquitto_binary()?;
    let port = free_port();
    let dir = scratch("mosquitto");
    let conf = dir.join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!("listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"),
    )
    .expect("mosquitto config");
    let mut cmd = Command::new(bin);
    cmd.arg("-c").arg(&conf);
    let mut p = Proc::spawn("mosquitto", cmd);
    wait_for_port(port, Duration::from_secs(10))
        .unwrap_or_else(|| panic!("mosquitto did not listen on {port}:\n{}", p.tail(20)));
    Some((p, port))
}

/// Waits until something accepts connections on the local `port`.
pub fn wait_for_port(port: u16, timeout: Duration) -> Option<()> {
    let t0 = Instant::now();
    while t0.elapsed() < timeout {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Some(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

/// `serve` of the tiny fleet model with the short timeouts the tests use (heartbeat 1.5 s,
/// debounce 300 ms, one profiling run, 500 ms placer budget), its profile store in `dir`;
/// `extra` adds the broker (`--listen` or `--broker`) and anything else.
pub fn serve_command(exe: &str, dir: &Path, extra: &[&str]) -> Command {
    let mut cmd = Command::new(exe);
    cmd.arg("serve")
        .arg("--model")
        .arg(repo_root().join("tests/fixtures/onnx/tiny-fleet.onnx"))
        .arg("--store")
        .arg(dir.join("profiles.json"))
        .args(["--heartbeat-timeout-ms", "1500", "--debounce-ms", "300"])
        .args(["--profile-runs", "1", "--time-limit-ms", "500"])
        .args(extra);
    cmd
}
