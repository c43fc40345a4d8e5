//! Subscribers (SPEC §11): an owner lets another user follow its awareness.
//! One direction, idempotent, durable (SES-8).

use super::auth::valid_eid;
use super::engine::{Engine, Handled, Rejection, request_only};
use super::social::SocialEvent;
use super::{ConnId, Millis};
use crate::codec::ErrorKind;
use crate::proto::message_scheme::Payload;
use crate::proto::{Identity, SubscriberAddRequest, SubscriberAddResponse, SubscriberRemove};

const MAX_LABEL_BYTES: usize = 128;

fn user(eid: &str) -> Option<Identity> {
    Some(Identity {
        eid: eid.to_string(),
        connection_resource_id: String::new(),
    })
}

impl Engine {
    /// The other user named in a subscriber or block stanza, checked (SUB-4, BLK-2).
    pub(super) fn other_user(&self, conn: ConnId, named: Option<&Identity>) -> Result<(String, String), Rejection> {
        let me = self.identity(conn).map(|i| i.eid.to_string()).unwrap_or_default();
        let other = named.map(|i| i.eid.clone()).unwrap_or_default();
        if !valid_eid(&other) || other == me {
            return Err(Rejection::new(
                ErrorKind::InvalidField,
                "`subscriber` must be another user's EID",
            ));
        }
        Ok((me, other))
    }

    /// SUB-1..5.
    pub(super) fn on_subscriber_add(
        &mut self,
        conn: ConnId,
        mut request: SubscriberAddRequest,
        now: Millis,
    ) -> Handled {
        self.claim(conn, &mut request.owner, "owner")?;
        let (owner, subscriber) = self.other_user(conn, request.subscriber.as_ref())?;
        if request.nickname.len() > MAX_LABEL_BYTES || request.group.len() > MAX_LABEL_BYTES {
            return Err(Rejection::new(
                ErrorKind::InvalidField,
                "nickname and group are at most 128 bytes",
            ));
        }
        let resource_id = match self.social.subscriber(&owner, &subscriber) {
            Some(entry) => entry.resource_id.clone(),
            None => self.fresh_id("s", now),
        };
        let event = SocialEvent::SubscriberAdded {
            owner: owner.clone(),
            subscriber: subscriber.clone(),
            resource_id: resource_id.clone(),
            nickname: request.nickname,
            group: request.group,
        };
        let answer = SubscriberAddResponse {
            owner: user(&owner),
            subscriber: user(&subscriber),
            subscriber_resource_id: resource_id,
            status: 1,
            message: "subscriber added".into(),
            timestamp: now,
        };
        self.change_audience(&[&owner], now, |engine| {
            engine.record(event)?;
            engine.send(conn, Payload::SubscriberAddResponse(answer));
            Ok(())
        })
    }

    /// SUB-6, SUB-7.
    pub(super) fn on_subscriber_remove(&mut self, conn: ConnId, mut request: SubscriberRemove, now: Millis) -> Handled {
        request_only(request.r#type, "SubscriberRemove")?;
        self.claim(conn, &mut request.owner, "owner")?;
        let (owner, subscriber) = self.other_user(conn, request.subscriber.as_ref())?;
        let answer = SubscriberRemove {
            owner: user(&owner),
            subscriber: user(&subscriber),
            r#type: 2,
            status: 1,
            message: "subscriber removed".into(),
            timestamp: now,
        };
        let exists = self.social.subscriber(&owner, &subscriber).is_some();
        self.change_audience(&[&owner], now, |engine| {
            if exists {
                engine.record(SocialEvent::SubscriberRemoved {
                    owner: owner.clone(),
                    subscriber: subscriber.clone(),
                })?;
            }
            engine.send(conn, Payload::SubscriberRemove(answer));
            Ok(())
        })
    }
}
