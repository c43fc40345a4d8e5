//! What a backend does on a user's behalf (the backend API, `proto/bimip_admin.proto`): mint and refresh tokens,
//! revoke a token, a device or a user, list and end sessions, read awareness, change subscribers and blocks. Every
//! call runs on the user's home shard, which owns the user's sessions, revocations, presence and graph
//! (src/core/README.md); the adapter routes it there. Pushes are in `push.rs`.

use super::auth::{Claims, valid_device_id, valid_eid};
use super::awareness::OFFLINE;
use super::engine::{Engine, Rejection};
use super::session::ConnState;
use super::social::SocialEvent;
use super::{CloseReason, ConnId, Millis, Transport};
use crate::codec::ErrorKind;

/// Longest lifetime of a minted token: a year.
pub const MAX_TOKEN_LIFETIME_S: u32 = 31_536_000;
/// Lifetime of a minted token when the caller names none.
pub const DEFAULT_TOKEN_LIFETIME_S: u32 = 3_600;
/// Nickname and group of a subscriber (SPEC SUB-3).
const MAX_LABEL_BYTES: usize = 128;

/// Why an operator call was refused; `Display` is the message for the caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OperatorError {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    NotFound(String),
    /// The token is not (or no longer) good: expired or revoked.
    #[error("{0}")]
    FailedPrecondition(String),
    /// A durable write failed; nothing changed.
    #[error("{0}")]
    Unavailable(String),
}

impl From<Rejection> for OperatorError {
    fn from(rejection: Rejection) -> Self {
        match rejection.kind {
            ErrorKind::Unavailable | ErrorKind::Internal => OperatorError::Unavailable(rejection.details),
            ErrorKind::NotFound => OperatorError::NotFound(rejection.details),
            _ => OperatorError::InvalidArgument(rejection.details),
        }
    }
}

/// A minted token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Minted {
    pub token: String,
    pub jti: String,
    pub expires_at: Millis,
}

/// One live session of a user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionInfo {
    pub device: String,
    pub transport: Transport,
    pub since: Millis,
    pub token_expires_at: Millis,
}

/// A user's awareness as the server holds it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AwarenessInfo {
    pub status: i32,
    pub lapses_at: Option<Millis>,
    pub last_seen: Option<Millis>,
    pub devices_online: usize,
    pub visibility: i32,
    pub location_sharing: i32,
    pub subscribers: Vec<String>,
    pub blocked: Vec<String>,
}

/// What a revocation covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RevokeScope<'a> {
    /// One token, by value.
    Token(&'a str),
    /// Every token of one device issued until now.
    Device { eid: &'a str, device: &'a str },
    /// Every token of every device of a user issued until now.
    User { eid: &'a str },
}

impl RevokeScope<'_> {
    /// The user the revocation concerns, whose home shard must run it; for a token, read unverified only to route.
    pub fn eid(&self) -> Option<String> {
        match self {
            RevokeScope::Token(token) => super::auth::unverified_eid(token),
            RevokeScope::Device { eid, .. } | RevokeScope::User { eid } => Some(eid.to_string()),
        }
    }
}

fn check_eid(eid: &str) -> Result<(), OperatorError> {
    if valid_eid(eid) {
        Ok(())
    } else {
        Err(OperatorError::InvalidArgument(format!(
            "{eid:?} is not an EID (SPEC §1.2)"
        )))
    }
}

fn check_device(device: &str) -> Result<(), OperatorError> {
    if valid_device_id(device) {
        Ok(())
    } else {
        Err(OperatorError::InvalidArgument(format!(
            "{device:?} is not a device id (SPEC §3.1)"
        )))
    }
}

impl Engine {
    /// A token for `device` of `eid`, signed with the server's key. Its `iat` is after every revocation by issue
    /// time that covers the device, so a token minted just after RevokeDevice is good.
    pub fn mint_token(
        &mut self,
        eid: &str,
        device: &str,
        lifetime_s: u32,
        now: Millis,
    ) -> Result<Minted, OperatorError> {
        check_eid(eid)?;
        check_device(device)?;
        let lifetime_s = match lifetime_s {
            0 => DEFAULT_TOKEN_LIFETIME_S,
            s if s <= MAX_TOKEN_LIFETIME_S => s,
            s => {
                return Err(OperatorError::InvalidArgument(format!(
                    "lifetime_s {s} is over a year ({MAX_TOKEN_LIFETIME_S})"
                )));
            }
        };
        let mut iat = now.div_euclid(1000);
        if let Some(until) = self.revocations.issued_until(eid, Some(device)) {
            iat = iat.max(until.div_euclid(1000) + 1);
        }
        let jti = self.fresh_id("t", now);
        let claims = Claims {
            eid: eid.to_string(),
            device_id: device.to_string(),
            jti: jti.clone(),
            iat,
            exp: iat + i64::from(lifetime_s),
            ..Claims::default()
        };
        let signer = self
            .signer
            .as_ref()
            .ok_or_else(|| OperatorError::FailedPrecondition("this server has no signing key".into()))?;
        let token = signer
            .mint(&claims)
            .map_err(|e| OperatorError::Unavailable(format!("could not sign a token: {e}")))?;
        Ok(Minted {
            token,
            jti,
            expires_at: claims.exp * 1000,
        })
    }

    /// A fresh token for the device of a good `token`, which is revoked; it lives as long as the old one was meant to.
    /// A live session bound to the old token stays open, bound to the new one (as TOK-9 after an in-band refresh).
    pub fn refresh_token(&mut self, token: &str, now: Millis) -> Result<Minted, OperatorError> {
        let old = self.verifier.verify(token, now).map_err(|kind| match kind {
            ErrorKind::TokenExpired => OperatorError::FailedPrecondition("the token has expired".into()),
            kind => OperatorError::InvalidArgument(format!("not a token of this server ({kind})")),
        })?;
        let issued_until = self.revocations.issued_until(&old.eid, Some(&old.device_id));
        if self.revocations.is_revoked(&old.jti) || issued_until.is_some_and(|until| old.iat_ms <= until) {
            return Err(OperatorError::FailedPrecondition("the token is revoked".into()));
        }
        let lifetime_s = u32::try_from(((old.exp_ms - old.iat_ms) / 1000).clamp(1, MAX_TOKEN_LIFETIME_S.into()))
            .unwrap_or(DEFAULT_TOKEN_LIFETIME_S);
        let minted = self.mint_token(&old.eid, &old.device_id, lifetime_s, now)?;
        self.revocations
            .revoke(&old.jti, self.token_end(old.exp_ms))
            .map_err(|e| OperatorError::Unavailable(format!("could not record the revocation: {e}")))?;
        let bound = self
            .registry
            .conn_of(&old.eid, &old.device_id)
            .filter(|conn| self.session(*conn).is_some_and(|s| *s.token.jti == *old.jti));
        if let Some(conn) = bound {
            let iat_ms = minted.expires_at - i64::from(lifetime_s) * 1000;
            self.rebind_token(conn, minted.jti.clone(), iat_ms, minted.expires_at);
        }
        Ok(minted)
    }

    /// Revokes what `scope` names, durably, then ends the live sessions it covers with 401 `token_revoked` (after
    /// the OUT-4 notice when `revoke_notice` is on). Returns how many sessions ended.
    pub fn revoke(&mut self, scope: RevokeScope<'_>, now: Millis) -> Result<usize, OperatorError> {
        let store_error =
            |e: super::StoreError| OperatorError::Unavailable(format!("could not record the revocation: {e}"));
        let victims: Vec<ConnId> = match scope {
            RevokeScope::Token(token) => {
                let token = self
                    .verifier
                    .verify_ignoring_time(token)
                    .map_err(|kind| OperatorError::InvalidArgument(format!("not a token of this server ({kind})")))?;
                self.revocations
                    .revoke(&token.jti, self.token_end(token.exp_ms))
                    .map_err(store_error)?;
                self.registry
                    .devices(&token.eid)
                    .map(|(_, conn)| conn)
                    .filter(|conn| self.session(*conn).is_some_and(|s| *s.token.jti == *token.jti))
                    .collect()
            }
            RevokeScope::Device { eid, device } => {
                check_eid(eid)?;
                check_device(device)?;
                let until = self.revocation_time(eid, Some(device), now);
                self.revocations
                    .revoke_issued_until(eid, Some(device), until)
                    .map_err(store_error)?;
                self.registry.conn_of(eid, device).into_iter().collect()
            }
            RevokeScope::User { eid } => {
                check_eid(eid)?;
                let until = self.revocation_time(eid, None, now);
                self.revocations
                    .revoke_issued_until(eid, None, until)
                    .map_err(store_error)?;
                self.registry.devices(eid).map(|(_, conn)| conn).collect()
            }
        };
        for victim in &victims {
            if self.config.revoke_notice {
                self.send_disconnect_notice(*victim, now);
            }
            let rejection = Rejection::new(ErrorKind::TokenRevoked, "the session's token was revoked");
            self.reject(*victim, None, rejection, now);
        }
        Ok(victims.len())
    }

    /// Until when a revocation by issue time made now must reach. Tokens carry whole seconds, and a token minted
    /// just after an earlier revocation got an `iat` one second past it (see [`Engine::mint_token`]), which may be
    /// later than `now`: the new revocation must cover that token too.
    fn revocation_time(&self, eid: &str, device: Option<&str>, now: Millis) -> Millis {
        let minted_after = self.revocations.issued_until(eid, device).map(|until| until + 1000);
        minted_after.map_or(now, |t| t.max(now))
    }

    /// The live sessions of `eid`, in device order.
    pub fn sessions_of(&self, eid: &str) -> Result<Vec<SessionInfo>, OperatorError> {
        check_eid(eid)?;
        Ok(self
            .registry
            .devices(eid)
            .filter_map(|(device, conn)| {
                let entry = self.conns.get(&conn)?;
                let ConnState::Live(session) = &entry.state else {
                    return None;
                };
                Some(SessionInfo {
                    device: device.to_string(),
                    transport: entry.transport,
                    since: session.since,
                    token_expires_at: session.token.exp_ms,
                })
            })
            .collect())
    }

    /// Ends one device's session: `Logout{type: 2, status: 1}` (DISCONNECT), then a normal close. The token stays
    /// good.
    pub fn end_session(&mut self, eid: &str, device: &str, now: Millis) -> Result<(), OperatorError> {
        check_eid(eid)?;
        check_device(device)?;
        let conn = self
            .registry
            .conn_of(eid, device)
            .ok_or_else(|| OperatorError::NotFound(format!("{eid} has no live session on device {device:?}")))?;
        self.send_disconnect_notice(conn, now);
        self.close(conn, CloseReason::Normal, now);
        Ok(())
    }

    /// `eid`'s awareness and graph as this shard holds them.
    pub fn awareness_of(&self, eid: &str) -> Result<AwarenessInfo, OperatorError> {
        check_eid(eid)?;
        let presence = self.awareness.presence.get(eid);
        let (visibility, location_sharing) = self.social.settings(eid);
        Ok(AwarenessInfo {
            status: presence.map_or(OFFLINE, |p| p.status),
            lapses_at: presence.and_then(|p| p.lapse_at),
            last_seen: if presence.is_some() {
                None
            } else {
                self.awareness.last_seen.get(eid).copied()
            },
            devices_online: self.registry.device_count(eid),
            visibility,
            location_sharing,
            subscribers: self.social.subscribers_of(eid).map(str::to_string).collect(),
            blocked: self.social.blocked_by(eid).map(str::to_string).collect(),
        })
    }

    /// Adds (or updates) or removes `other` as a subscriber of `owner`, as the owner's own request would (SPEC §11).
    pub fn set_subscriber(
        &mut self,
        owner: &str,
        other: &str,
        add: Option<(&str, &str)>,
        now: Millis,
    ) -> Result<bool, OperatorError> {
        self.check_pair(owner, other)?;
        let existing = self.social.subscriber(owner, other).map(|e| e.resource_id.clone());
        let event = match add {
            Some((nickname, group)) => {
                if nickname.len() > MAX_LABEL_BYTES || group.len() > MAX_LABEL_BYTES {
                    return Err(OperatorError::InvalidArgument(
                        "nickname and group are at most 128 bytes".into(),
                    ));
                }
                let resource_id = existing.unwrap_or_else(|| self.fresh_id("s", now));
                Some(SocialEvent::SubscriberAdded {
                    owner: owner.to_string(),
                    subscriber: other.to_string(),
                    resource_id,
                    nickname: nickname.to_string(),
                    group: group.to_string(),
                })
            }
            None => existing.map(|_| SocialEvent::SubscriberRemoved {
                owner: owner.to_string(),
                subscriber: other.to_string(),
            }),
        };
        self.record_for(&[owner], event, now)
    }

    /// Blocks or unblocks `other` for `owner`, as the owner's BlockSubscriber would (SPEC §12).
    pub fn set_block(&mut self, owner: &str, other: &str, block: bool, now: Millis) -> Result<bool, OperatorError> {
        self.check_pair(owner, other)?;
        let event = match (block, self.social.blocks(owner, other)) {
            (true, false) => Some(SocialEvent::Blocked {
                owner: owner.to_string(),
                blocked: other.to_string(),
            }),
            (false, true) => Some(SocialEvent::Unblocked {
                owner: owner.to_string(),
                blocked: other.to_string(),
            }),
            _ => None,
        };
        // A block hides each user of the pair from the other (AWR-9).
        self.record_for(&[owner, other], event, now)
    }

    fn check_pair(&self, owner: &str, other: &str) -> Result<(), OperatorError> {
        check_eid(owner)?;
        check_eid(other)?;
        if owner == other {
            return Err(OperatorError::InvalidArgument("a user cannot name itself".into()));
        }
        Ok(())
    }

    /// Records `event` (if any) and tells the watchers of `owners` what it changed for them.
    fn record_for(&mut self, owners: &[&str], event: Option<SocialEvent>, now: Millis) -> Result<bool, OperatorError> {
        let Some(event) = event else {
            return Ok(false);
        };
        self.change_audience(owners, now, |engine| engine.record(event))?;
        Ok(true)
    }
}
