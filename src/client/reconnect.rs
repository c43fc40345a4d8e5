//! When a client connects again (SPEC CLI-4, CLI-5, CLI-6), as a policy without I/O: the caller says how each
//! connection ended and how long its session lasted, and hands in the random part of the wait, and the policy
//! answers whether and when to connect again. The same inputs give the same waits.

use std::time::Duration;

/// The first wait, and the longest (CLI-6).
pub const FIRST_WAIT: Duration = Duration::from_secs(1);
pub const LONGEST_WAIT: Duration = Duration::from_secs(60);

/// How a connection ended, as far as reconnecting goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ended {
    /// The application logged out or closed the connection itself.
    ByClient,
    /// Another connection of the same device replaced this session (4409, `session_replaced`).
    Replaced,
    /// The token is no longer good (4401, `token_expired`/`token_revoked`, or HTTP 401 to the upgrade).
    TokenRefused,
    /// Anything else: another close code, a lost connection, a failed connect.
    Other,
}

/// What the client does next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    /// No attempt of its own (CLI-4).
    Stop,
    /// Not with this token: a different one first, or stop (CLI-5).
    NewToken,
    /// Connect again after this wait (CLI-6).
    After(Duration),
}

/// The growing wait between attempts.
#[derive(Clone, Debug, Default)]
pub struct Backoff {
    /// The last wait's base (without its random part); `None` before the first and after a lasting session.
    last: Option<Duration>,
}

impl Backoff {
    /// What to do after a connection ended whose session lasted `lasted` (zero for a failed connect).
    /// `random` in [0, 1) picks the random part of the wait: up to half of it again (CLI-6).
    pub fn next(&mut self, ended: Ended, lasted: Duration, ping_interval: Duration, random: f64) -> Next {
        match ended {
            Ended::ByClient | Ended::Replaced => Next::Stop,
            Ended::TokenRefused => Next::NewToken,
            Ended::Other => {
                if lasted >= ping_interval {
                    self.last = None;
                }
                let base = self.last.map_or(FIRST_WAIT, |last| (last * 2).min(LONGEST_WAIT));
                self.last = Some(base);
                Next::After(base + base.mul_f64(random.clamp(0.0, 1.0) / 2.0))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PING: Duration = Duration::from_secs(30);

    #[test]
    fn waits_start_at_one_second_double_to_a_minute_and_reset_after_a_lasting_session() {
        let mut backoff = Backoff::default();
        let waits: Vec<Next> = (0..9)
            .map(|_| backoff.next(Ended::Other, Duration::ZERO, PING, 0.0))
            .collect();
        let secs = [1, 2, 4, 8, 16, 32, 60, 60, 60];
        assert_eq!(waits, secs.map(|s| Next::After(Duration::from_secs(s))));
        assert_eq!(
            backoff.next(Ended::Other, PING, PING, 0.0),
            Next::After(FIRST_WAIT),
            "a session of one ping interval resets the wait"
        );
    }

    #[test]
    fn the_random_part_is_up_to_half_of_the_wait() {
        let mut backoff = Backoff::default();
        assert_eq!(
            backoff.next(Ended::Other, Duration::ZERO, PING, 0.999),
            Next::After(Duration::from_millis(1499) + Duration::from_micros(500))
        );
        assert_eq!(
            backoff.next(Ended::Other, Duration::ZERO, PING, 7.0),
            Next::After(Duration::from_secs(3))
        );
    }

    #[test]
    fn replaced_and_own_closes_stop_and_a_refused_token_needs_another() {
        let mut backoff = Backoff::default();
        assert_eq!(backoff.next(Ended::Replaced, Duration::ZERO, PING, 0.5), Next::Stop);
        assert_eq!(backoff.next(Ended::ByClient, Duration::ZERO, PING, 0.5), Next::Stop);
        assert_eq!(
            backoff.next(Ended::TokenRefused, Duration::ZERO, PING, 0.5),
            Next::NewToken
        );
    }
}
