//! Blocking (SPEC §12): a user blocks another; while the block lasts neither
//! sees the other, and chat and acknowledgments between them are refused.
//! The blocked user is never told (BLK-6).

use super::engine::{Engine, Handled, Rejection, request_only};
use super::social::SocialEvent;
use super::{ConnId, Millis};
use crate::codec::ErrorKind;
use crate::proto::message_scheme::Payload;
use crate::proto::{BlockSubscriber, Identity};

const BLOCK: i32 = 1;
const UNBLOCK: i32 = 2;

impl Engine {
    /// BLK-1, BLK-2, BLK-5.
    pub(super) fn on_block(&mut self, conn: ConnId, mut request: BlockSubscriber, now: Millis) -> Handled {
        request_only(request.r#type, "BlockSubscriber")?;
        let action = match request.action {
            0 | BLOCK => BLOCK,
            UNBLOCK => UNBLOCK,
            _ => {
                return Err(Rejection::new(
                    ErrorKind::InvalidField,
                    "action must be 0, 1 (block) or 2 (unblock)",
                ));
            }
        };
        self.claim(conn, &mut request.owner, "owner")?;
        let (owner, other) = self.other_user(conn, request.subscriber.as_ref())?;
        let blocked_now = self.social.blocks(&owner, &other);
        let event = match (action, blocked_now) {
            (BLOCK, false) => Some(SocialEvent::Blocked {
                owner: owner.clone(),
                blocked: other.clone(),
            }),
            (UNBLOCK, true) => Some(SocialEvent::Unblocked {
                owner: owner.clone(),
                blocked: other.clone(),
            }),
            _ => None,
        };
        let answer = BlockSubscriber {
            owner: Some(Identity {
                eid: owner.clone(),
                connection_resource_id: String::new(),
            }),
            subscriber: Some(Identity {
                eid: other.clone(),
                connection_resource_id: String::new(),
            }),
            r#type: 2,
            status: 1,
            message: if action == BLOCK { "blocked" } else { "unblocked" }.into(),
            timestamp: now,
            action,
        };
        // A block hides each user of the pair from the other (AWR-9).
        self.change_audience(&[&owner, &other], now, |engine| {
            if let Some(event) = event {
                engine.record(event)?;
            }
            engine.send(conn, Payload::BlockSubscriber(answer));
            Ok(())
        })
    }
}
