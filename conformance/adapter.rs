//! Client mode's hold on the client under test: the adapter process (`sh -c CMD`), spoken to in JSON lines as
//! conformance/README.md ("Client mode") defines. One process per case; it is killed by its PID when the case ends.

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

/// What the adapter wrote on a line: an event, or a line that is no JSON object.
pub type Line = Result<Value, String>;

/// A running adapter.
pub struct Adapter {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<Line>,
    stderr: Arc<Mutex<String>>,
    /// The adapter's `ready` event: its name and version.
    pub ready: Value,
}

/// Longest wait for the adapter's `ready` line.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// At most this much of the adapter's standard error is kept for the transcript.
const STDERR_KEPT: usize = 16 * 1024;

impl Adapter {
    /// Starts `command` with `sh -c` and waits for its `ready` event.
    pub fn start(command: &str) -> Result<Adapter, String> {
        let mut sh = Command::new("sh");
        sh.arg("-c")
            .arg(command)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // A group of its own: the adapter may be a child of the shell (or of `npm`), and all of them end with the case.
        #[cfg(unix)]
        std::os::unix::process::CommandExt::process_group(&mut sh, 0);
        let mut child = sh
            .spawn()
            .map_err(|e| format!("cannot start the adapter `{command}`: {e}"))?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().ok_or("the adapter has no standard output")?;
        let stderr_pipe = child.stderr.take().ok_or("the adapter has no standard error")?;
        let (tx, lines) = mpsc::channel();
        std::thread::Builder::new()
            .name("conform-adapter-out".into())
            .spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { return };
                    if line.trim().is_empty() {
                        continue;
                    }
                    let parsed = serde_json::from_str::<Value>(&line)
                        .ok()
                        .filter(Value::is_object)
                        .ok_or(line);
                    if tx.send(parsed).is_err() {
                        return;
                    }
                }
            })
            .map_err(|e| e.to_string())?;
        let stderr = Arc::new(Mutex::new(String::new()));
        let kept = Arc::clone(&stderr);
        std::thread::Builder::new()
            .name("conform-adapter-err".into())
            .spawn(move || {
                let mut pipe = stderr_pipe;
                let mut chunk = [0u8; 4096];
                while let Ok(n @ 1..) = pipe.read(&mut chunk) {
                    let mut kept = kept.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                    if kept.len() < STDERR_KEPT {
                        kept.push_str(&String::from_utf8_lossy(&chunk[..n]));
                    }
                }
            })
            .map_err(|e| e.to_string())?;
        let mut adapter = Adapter {
            child,
            stdin,
            lines,
            stderr,
            ready: Value::Null,
        };
        match adapter.next(READY_TIMEOUT) {
            Some(Ok(event)) if event["event"] == "ready" => {
                adapter.ready = event;
                Ok(adapter)
            }
            Some(Ok(event)) => Err(format!("the adapter's first line is not `ready`: {event}")),
            Some(Err(line)) => Err(format!("the adapter's first line is no JSON object: {line:?}")),
            None => {
                // Give its standard error a moment to arrive before quoting it.
                std::thread::sleep(Duration::from_millis(50));
                let how = match adapter.child.try_wait() {
                    Ok(Some(status)) => format!("ended ({status}) without a `ready` line"),
                    _ => format!("wrote no `ready` line within {} s", READY_TIMEOUT.as_secs()),
                };
                Err(format!(
                    "the adapter {how}; its standard error: {}",
                    adapter.stderr().trim_end()
                ))
            }
        }
    }

    /// Writes one command line.
    pub fn send(&mut self, command: &Value) -> Result<(), String> {
        let stdin = self.stdin.as_mut().ok_or("the adapter's standard input is closed")?;
        writeln!(stdin, "{command}")
            .and_then(|()| stdin.flush())
            .map_err(|e| format!("writing to the adapter: {e}"))
    }

    /// The next line the adapter wrote, waiting at most `within`.
    pub fn next(&mut self, within: Duration) -> Option<Line> {
        self.lines.recv_timeout(within).ok()
    }

    /// What the adapter wrote to its standard error so far.
    pub fn stderr(&self) -> String {
        self.stderr
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

impl Drop for Adapter {
    fn drop(&mut self) {
        // Closing its input asks it to end; a case never waits on an adapter that does not.
        self.stdin = None;
        #[cfg(any(target_os = "linux", target_os = "android"))]
        if let Some(group) = rustix::process::Pid::from_raw(self.child.id().cast_signed()) {
            let _ = rustix::process::kill_process_group(group, rustix::process::Signal::KILL);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
