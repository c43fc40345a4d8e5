//! Logout (SPEC OUT): the device's token is revoked, the server confirms, and
//! the connection closes normally.

use super::engine::{Engine, Handled, Rejection, request_only};
use super::{CloseReason, ConnId, Millis};
use crate::codec::ErrorKind;
use crate::proto::Logout;
use crate::proto::message_scheme::Payload;

const RESPONSE: i32 = 2;
const DISCONNECT: i32 = 1;
const SUCCESS: i32 = 3;

impl Engine {
    pub(super) fn on_logout(&mut self, conn: ConnId, mut logout: Logout, now: Millis) -> Handled {
        request_only(logout.r#type, "Logout")?;
        self.claim(conn, &mut logout.entity, "entity")?;
        let token = self.with_session(conn, |s| (s.token.jti.clone(), s.token.exp_ms));
        let Some((jti, exp)) = token else { return Ok(()) };
        self.revocations
            .revoke(&jti, self.token_end(exp))
            .map_err(|e| Rejection::new(ErrorKind::Unavailable, format!("could not record the logout: {e}")))?;
        let answer = Logout {
            entity: logout.entity,
            r#type: RESPONSE,
            status: SUCCESS,
            timestamp: now,
        };
        self.send(conn, Payload::Logout(answer));
        self.close(conn, CloseReason::Normal, now);
        Ok(())
    }

    /// OUT-4: tells a session that another device revoked it, before the
    /// 401 `token_revoked` that ends it (sent only with `Config::revoke_notice`).
    pub(super) fn send_disconnect_notice(&mut self, victim: ConnId, now: Millis) {
        let Some(identity) = self.with_session(victim, |s| s.identity.clone()) else {
            return;
        };
        let notice = Logout {
            entity: Some(identity.to_proto()),
            r#type: RESPONSE,
            status: DISCONNECT,
            timestamp: now,
        };
        self.send(victim, Payload::Logout(notice));
    }
}
