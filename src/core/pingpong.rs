//! Heartbeats in both directions (SPEC PING): the server answers client pings
//! at once, pings every session each interval, and ends a session whose pongs
//! stop: on the tick that finds `max_missed_pongs` consecutive pings unanswered.

use super::engine::{Engine, Handled, MAX_REF_BYTES, Rejection};
use super::{CloseReason, ConnId, Millis};
use crate::codec::ErrorKind;
use crate::proto::PingPong;
use crate::proto::message_scheme::Payload;

const REQUEST: i32 = 1;
const RESPONSE: i32 = 2;
const PENDING: i32 = 1;
const OK: i32 = 2;

impl Engine {
    pub(super) fn on_pingpong(&mut self, conn: ConnId, mut ping: PingPong, now: Millis) -> Handled {
        // identity_mismatch is reported before invalid_field (ENV-13).
        self.claim(conn, &mut ping.to, "to").map_err(|r| r.with_ref(&ping.id))?;
        if !(1..=6).contains(&ping.status) {
            return Err(Rejection::new(ErrorKind::InvalidField, "PingPong.status must be 1..=6").with_ref(&ping.id));
        }
        if ping.id.len() > MAX_REF_BYTES {
            return Err(
                Rejection::new(ErrorKind::InvalidField, "PingPong.id is longer than 128 bytes").with_ref(&ping.id),
            );
        }
        match ping.r#type {
            REQUEST => {
                let pong = PingPong {
                    to: ping.to,
                    r#type: RESPONSE,
                    status: OK,
                    request_time: ping.request_time,
                    response_time: now,
                    rtt: now.saturating_sub(ping.request_time),
                    id: ping.id,
                };
                self.send_volatile(conn, Payload::PingpongMessage(pong));
                Ok(())
            }
            RESPONSE => {
                self.with_session(conn, |s| {
                    // A pong for any outstanding ping proves the link is alive.
                    let matches = s.ping.outstanding.iter().any(|(id, request_time)| {
                        (!ping.id.is_empty() && ping.id == *id)
                            || (ping.id.is_empty() && ping.request_time == *request_time)
                    });
                    if matches {
                        // Given back, not cleared: an idle session keeps no buffer between pings.
                        s.ping.outstanding = Vec::new();
                        s.ping.missed = 0;
                    }
                });
                Ok(())
            }
            _ => Err(Rejection::new(ErrorKind::InvalidField, "PingPong.type must be 1 or 2").with_ref(&ping.id)),
        }
    }

    pub(super) fn on_ping_timer(&mut self, conn: ConnId, now: Millis) {
        let interval = self.config.ping_interval_ms;
        let max_missed = self.config.max_missed_pongs;
        let id = self.fresh_id("p", now);
        let Some((timed_out, to)) = self.with_session(conn, |s| {
            if !s.ping.outstanding.is_empty() {
                s.ping.missed += 1;
            }
            (s.ping.missed >= max_missed, s.identity.to_proto())
        }) else {
            return;
        };
        if timed_out {
            let message = ErrorKind::PingTimeout.to_message(None, "pongs stopped", "", now);
            self.send(conn, Payload::ErrorMessage(message));
            return self.close(conn, CloseReason::Error(ErrorKind::PingTimeout), now);
        }
        let next_at = now.saturating_add(interval);
        // The session timer that called this sets itself again from `next_at`.
        self.with_session(conn, |s| {
            s.ping.outstanding.push((id.clone(), now));
            s.ping.next_at = next_at;
        });
        let ping = PingPong {
            to: Some(to),
            r#type: REQUEST,
            status: PENDING,
            request_time: now,
            id,
            ..PingPong::default()
        };
        self.send_unanswering(conn, Payload::PingpongMessage(ping));
    }
}
