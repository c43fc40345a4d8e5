//! Restarting the target (issue 18, lifecycle hooks): how a scenario that needs the server to go down and come
//! back ("the server restarts", "the server is killed and started again": SES-8, AUTH-14, CHAT-15, QUE-2) gets
//! it, for any target.
//!
//! A target is restarted through a [`ServerControl`]: shell commands the user gives (`--restart-cmd`, or
//! `--kill-cmd` with `--start-cmd`, [`ShellHooks`]), or the built-in server's own (`builtin.rs`). The network
//! driver runs the hook, then waits until the target accepts connections again. Without a hook for the kind of
//! restart a case needs, the case is skipped and says which option would run it. The runner runs the cases
//! that restart the server one at a time, after the others ([`crate::conformance::runner`]): a restart ends
//! every session on the target, a concurrent case's too.

use std::fmt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How a scenario takes the server down.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Restart {
    /// Stopped the way its operator stops it, then started again (SES-8).
    Graceful,
    /// Killed without warning (`kill -9`: whatever it had not written is gone), then started again (QUE-2).
    Kill,
}

impl fmt::Display for Restart {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Restart::Graceful => "restart",
            Restart::Kill => "kill and start",
        })
    }
}

/// Brings the target down and up again. `Ok` once the hook has done its part; the driver then waits for the
/// target to answer.
pub trait ServerControl: Send + Sync {
    /// Why this kind of restart cannot be done (the skip reason), if it cannot.
    fn unavailable(&self, how: Restart) -> Option<String>;
    fn restart(&self, how: Restart) -> Result<(), String>;
}

/// Longest a hook command may run.
const HOOK_TIMEOUT: Duration = Duration::from_secs(60);

/// The user's shell commands (`sh -c`), each of which must return (a start command backgrounds the server).
#[derive(Clone, Debug, Default)]
pub struct ShellHooks {
    /// `--restart-cmd`: a graceful restart.
    pub restart: Option<String>,
    /// `--kill-cmd`: kills the server without warning (e.g. `kill -9 $(cat server.pid)`).
    pub kill: Option<String>,
    /// `--start-cmd`: starts it after a kill.
    pub start: Option<String>,
}

impl ShellHooks {
    /// Whether any hook was given.
    pub fn any(&self) -> bool {
        self.restart.is_some() || self.kill.is_some() || self.start.is_some()
    }
}

impl ServerControl for ShellHooks {
    fn unavailable(&self, how: Restart) -> Option<String> {
        match how {
            Restart::Graceful if self.restart.is_none() && (self.kill.is_none() || self.start.is_none()) => {
                Some("restarting the server needs --restart-cmd (or --kill-cmd and --start-cmd)".into())
            }
            Restart::Kill if self.kill.is_none() || self.start.is_none() => {
                Some("killing the server needs --kill-cmd and --start-cmd".into())
            }
            _ => None,
        }
    }

    fn restart(&self, how: Restart) -> Result<(), String> {
        if let Some(why) = self.unavailable(how) {
            return Err(why);
        }
        match (how, &self.restart, &self.kill, &self.start) {
            (Restart::Graceful, Some(restart), _, _) => run_hook("--restart-cmd", restart),
            (_, _, Some(kill), Some(start)) => {
                run_hook("--kill-cmd", kill)?;
                run_hook("--start-cmd", start)
            }
            _ => Err(format!("no hook for a {how}")),
        }
    }
}

/// Runs `sh -c command`, waiting at most [`HOOK_TIMEOUT`]; a non-zero exit is an error with its stderr.
pub fn run_hook(option: &str, command: &str) -> Result<(), String> {
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(command)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{option} {command:?}: {e}"))?;
    let until = Instant::now() + HOOK_TIMEOUT;
    loop {
        match child.try_wait() {
            Ok(Some(status)) if status.success() => return Ok(()),
            Ok(Some(status)) => {
                let mut stderr = String::new();
                if let Some(mut pipe) = child.stderr.take() {
                    let _ = std::io::Read::read_to_string(&mut pipe, &mut stderr);
                }
                return Err(format!("{option} {command:?} exited with {status}: {}", stderr.trim()));
            }
            Ok(None) if Instant::now() < until => std::thread::sleep(Duration::from_millis(20)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "{option} {command:?} still ran after {HOOK_TIMEOUT:?} (a start command must put the server in \
                     the background)"
                ));
            }
            Err(e) => return Err(format!("{option} {command:?}: {e}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hook_that_fails_says_how_and_a_missing_one_says_which_option() {
        let hooks = ShellHooks {
            restart: Some("echo nope >&2; exit 3".into()),
            ..ShellHooks::default()
        };
        let error = hooks.restart(Restart::Graceful).unwrap_err();
        assert!(error.contains("exited with") && error.contains("nope"), "{error}");
        let error = hooks.restart(Restart::Kill).unwrap_err();
        assert!(error.contains("--kill-cmd and --start-cmd"), "{error}");
        assert!(hooks.unavailable(Restart::Graceful).is_none());
        let both = ShellHooks {
            kill: Some("true".into()),
            start: Some("true".into()),
            ..ShellHooks::default()
        };
        assert_eq!(both.restart(Restart::Kill), Ok(()));
        assert_eq!(both.restart(Restart::Graceful), Ok(()));
        assert!(ShellHooks::default().unavailable(Restart::Graceful).is_some());
    }
}
