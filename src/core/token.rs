//! Token control (SPEC TOK): revoking a token, one device's session or every
//! session of the caller's EID; and refreshing the session's own token.
//! Revocations are durable before they are confirmed, and a revoked session
//! ends at once.

use super::auth::Claims;
use super::engine::{Engine, Handled, Rejection, request_only};
use super::timers::Timer;
use super::{ConnId, Millis};
use crate::codec::ErrorKind;
use crate::proto::message_scheme::Payload;
use crate::proto::{Identity, TokenRefreshRequest, TokenRefreshResponse, TokenRevokeRequest, TokenRevokeResponse};

const RESPONSE: i32 = 2;
const SUCCESS: i32 = 1;

impl Engine {
    pub(super) fn on_token_revoke(&mut self, conn: ConnId, request: TokenRevokeRequest, now: Millis) -> Handled {
        request_only(request.r#type, "TokenRevokeRequest")?;
        let Some(me) = self.identity(conn).cloned() else {
            return Ok(());
        };
        let mut to = request.to.unwrap_or_default();
        if to.eid.is_empty() {
            to.eid = me.eid.to_string();
        } else if to.eid != *me.eid {
            return Err(Rejection::new(
                ErrorKind::Forbidden,
                "only the caller's own tokens may be revoked",
            ));
        }
        // (jti, exp) of every token to revoke.
        let targets: Vec<(String, Millis)> = if !request.token.is_empty() {
            let token = self.verifier.verify_ignoring_time(&request.token).map_err(|kind| {
                Rejection::new(
                    ErrorKind::InvalidField,
                    format!("`token` is not a token of this server ({kind})"),
                )
            })?;
            if token.eid != *me.eid {
                return Err(Rejection::new(ErrorKind::Forbidden, "the token belongs to another eid"));
            }
            vec![(token.jti, token.exp_ms)]
        } else {
            let conns: Vec<ConnId> = if to.connection_resource_id.is_empty() {
                self.registry.devices(&me.eid).map(|(_, c)| c).collect()
            } else {
                let one = self.registry.conn_of(&me.eid, &to.connection_resource_id);
                vec![one.ok_or_else(|| Rejection::new(ErrorKind::NotFound, "that device has no live session"))?]
            };
            conns
                .into_iter()
                .filter_map(|c| self.with_session(c, |s| (s.token.jti.to_string(), s.token.exp_ms)))
                .collect()
        };
        for (jti, exp) in &targets {
            self.revocations
                .revoke(jti, self.token_end(*exp))
                .map_err(|e| Rejection::new(ErrorKind::Unavailable, format!("could not record the revocation: {e}")))?;
        }
        let ended: Vec<ConnId> = self
            .conns
            .keys()
            .copied()
            .filter(|c| {
                let jti = self.session_jti(*c);
                jti.is_some_and(|jti| targets.iter().any(|(t, _)| *t == jti))
            })
            .collect();
        let answer = TokenRevokeResponse {
            to: Some(Identity {
                eid: to.eid,
                connection_resource_id: to.connection_resource_id,
            }),
            status: SUCCESS,
            r#type: RESPONSE,
            timestamp: now,
            rtt: if request.timestamp > 0 {
                now.saturating_sub(request.timestamp)
            } else {
                0
            },
            sessions_ended: i32::try_from(ended.len()).unwrap_or(i32::MAX),
        };
        self.send(conn, Payload::TokenRevokeResponse(answer));
        for victim in ended {
            if self.config.revoke_notice && victim != conn {
                self.send_disconnect_notice(victim, now);
            }
            self.reject(
                victim,
                None,
                Rejection::new(ErrorKind::TokenRevoked, "the session's token was revoked"),
                now,
            );
        }
        Ok(())
    }

    pub(super) fn on_token_refresh(&mut self, conn: ConnId, mut request: TokenRefreshRequest, now: Millis) -> Handled {
        self.claim(conn, &mut request.to, "to")?;
        if self.signer.is_none() {
            return Err(Rejection::new(ErrorKind::Unavailable, "this server has no signing key"));
        }
        let Some((me, old_jti, old_iat, old_exp)) = self.with_session(conn, |s| {
            (s.identity.clone(), s.token.jti.clone(), s.token.iat_ms, s.token.exp_ms)
        }) else {
            return Ok(());
        };
        // The new token lives as long as the old one was meant to.
        let lifetime_s = ((old_exp - old_iat) / 1000).max(1);
        let iat = now.div_euclid(1000);
        let jti = self.fresh_id("t", now);
        let claims = Claims {
            eid: me.eid.to_string(),
            device_id: me.device.to_string(),
            jti: jti.clone(),
            iat,
            exp: iat + lifetime_s,
            nbf: None,
            iss: None,
            aud: None,
        };
        let minted = self.signer.as_ref().map(|signer| signer.mint(&claims));
        let token = match minted {
            Some(Ok(token)) => token,
            Some(Err(e)) => {
                return Err(Rejection::new(
                    ErrorKind::Internal,
                    format!("could not sign a token: {e}"),
                ));
            }
            None => return Err(Rejection::new(ErrorKind::Unavailable, "this server has no signing key")),
        };
        self.revocations
            .revoke(&old_jti, self.token_end(old_exp))
            .map_err(|e| Rejection::new(ErrorKind::Unavailable, format!("could not record the revocation: {e}")))?;
        let exp_ms = claims.exp * 1000;
        self.rebind_token(conn, jti, claims.iat * 1000, exp_ms);
        let answer = TokenRefreshResponse {
            to: Some(me.to_proto()),
            status: SUCCESS,
            token,
            expires_at: exp_ms,
            timestamp: now,
        };
        self.send(conn, Payload::TokenRefreshResponse(answer));
        Ok(())
    }

    /// Binds the session on `conn` to a refreshed token (TOK-9): it now ends at the new token's expiry.
    pub(super) fn rebind_token(&mut self, conn: ConnId, jti: String, iat_ms: Millis, exp_ms: Millis) {
        if let Some(due) = self.session(conn).map(|s| self.session_due(s)) {
            self.timers.cancel(due, Timer::Session(conn));
        }
        self.with_session(conn, |s| {
            s.token.jti = jti.into();
            s.token.iat_ms = iat_ms;
            s.token.exp_ms = exp_ms;
        });
        if let Some(due) = self.session(conn).map(|s| self.session_due(s)) {
            self.timers.set(due, Timer::Session(conn));
        }
    }

    fn session_jti(&self, conn: ConnId) -> Option<String> {
        match &self.conns.get(&conn)?.state {
            super::session::ConnState::Live(s) => Some(s.token.jti.to_string()),
            super::session::ConnState::AwaitingAuth { .. } => None,
        }
    }
}
