//! The progress line printed while a run goes on: one line a second on
//! standard error, rewritten in place when that is a terminal.

use std::io::{IsTerminal, Write};
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Calls `line` once a second and prints what it returns, until `stop`.
pub(crate) fn spawn(stop: CancellationToken, mut line: impl FnMut() -> String + Send + 'static) -> JoinHandle<()> {
    tokio::spawn(async move {
        let terminal = std::io::stderr().is_terminal();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.tick().await;
        loop {
            tokio::select! {
                biased;
                () = stop.cancelled() => break,
                _ = tick.tick() => {
                    let text = line();
                    let mut err = std::io::stderr().lock();
                    let _ = if terminal { write!(err, "\r\x1b[2K{text}") } else { writeln!(err, "{text}") };
                    let _ = err.flush();
                }
            }
        }
        if terminal {
            let _ = writeln!(std::io::stderr());
        }
    })
}
