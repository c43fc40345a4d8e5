//! Logout (SPEC OUT): the device's token is revoked, the server confirms, and
//! the connection closes normally.

use super::engine::{Engine, Handled, Rejection, request_only};
use super::{CloseReason, ConnId, Millis};
use crate::codec::ErrorKind;
use crate::proto::Logout;
use crate::proto::message_scheme::Payload;

const RESPONSE: i32 = 2;
const SUCCESS: i32 = 3;

impl Engine {
    pub(super) fn on_logout(&mut self, conn: ConnId, mut logout: Logout, now: Millis) -> Handled {
        request_only(logout.r#type, "Logout")?;
        self.claim(conn, &mut logout.entity, "entity")?;
        let token = self.with_session(conn, |s| (s.token.jti.clone(), s.token.exp_ms));
        let Some((jti, exp)) = token else { return Ok(()) };
        self.revocations
            .revoke(&jti, exp)
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
}
