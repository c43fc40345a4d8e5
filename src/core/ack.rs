//! Acknowledgments (SPEC §16): a message's one state moves forward only; every
//! raise reaches the sender's devices and the receiver's other devices through
//! the queues; the acking device always gets a confirmation. The same stanza
//! confirms queue items (QUE-4), also when it is refused for a block (QUE-13).

use super::engine::{Engine, Handled, Rejection};
use super::queue::{ChatEvent, QueueItem, StateRaised};
use super::{ConnId, Millis};
use crate::codec::ErrorKind;
use crate::proto::AcknowledgmentRequest;
use crate::proto::AcknowledgmentResponse;
use crate::proto::message_scheme::Payload;

const SENT: i32 = 4;

impl Engine {
    pub(super) fn on_ack(&mut self, conn: ConnId, mut request: AcknowledgmentRequest, now: Millis) -> Handled {
        let message_id = request.message_id.clone();
        let not_found = || Rejection::new(ErrorKind::NotFound, "no such message for you").with_ref(&message_id);
        self.claim(conn, &mut request.from, "from")
            .map_err(|r| r.with_ref(&message_id))?;
        if !(2..=4).contains(&request.status) {
            return Err(Rejection::new(ErrorKind::InvalidField, "status must be 2, 3 or 4").with_ref(&message_id));
        }
        let Some(me) = self.identity(conn).cloned() else {
            return Ok(());
        };
        let meta = self.chat.messages.get(&message_id).cloned().ok_or_else(not_found)?;
        let receiver_side = meta.receiver == *me.eid;
        if !receiver_side && meta.sender != *me.eid {
            return Err(not_found());
        }
        if receiver_side && request.status == SENT {
            return Err(
                Rejection::new(ErrorKind::InvalidField, "a receiver acknowledges 2 or 3").with_ref(&message_id),
            );
        }
        self.confirm_items(conn, &message_id, request.status, receiver_side);
        if self.social.blocked_pair(&meta.sender, &meta.receiver) {
            return Err(
                Rejection::new(ErrorKind::Blocked, "a block stands between sender and receiver").with_ref(&message_id),
            );
        }
        let at = if request.timestamp > 0 { request.timestamp } else { now };
        if receiver_side && request.status > meta.state {
            let raised = ChatEvent::StateRaised(StateRaised {
                message_id: message_id.clone(),
                state: request.status,
                at,
            });
            let unavailable =
                |e: super::StoreError| Rejection::new(ErrorKind::Unavailable, format!("could not store: {e}"));
            self.chat_store.record(&raised).map_err(unavailable)?;
            self.chat.apply(&raised);
            self.mark_unsynced();
            let update = AcknowledgmentResponse {
                from: Some(me.to_proto()),
                to: None,
                message_id: message_id.clone(),
                status: request.status,
                timestamp: at,
                chat_id: meta.chat_id.clone(),
                version: meta.version,
            };
            let to_sender = QueueItem::new(None, Payload::AcknowledgmentResponse(update.clone()));
            let to_receiver = QueueItem::new(Some(me.device.to_string()), Payload::AcknowledgmentResponse(update));
            self.enqueue(&meta.sender, to_sender).map_err(unavailable)?;
            self.enqueue(&meta.receiver, to_receiver).map_err(unavailable)?;
        }
        let recorded = self.chat.messages.get(&message_id).map_or(meta.state, |m| m.state);
        let state_at = self.chat.messages.get(&message_id).map_or(at, |m| m.state_at);
        let status = if !receiver_side && request.status == SENT {
            SENT
        } else {
            recorded
        };
        let confirmation = AcknowledgmentResponse {
            from: Some(me.to_proto()),
            to: Some(me.to_proto()),
            message_id,
            status,
            timestamp: state_at,
            chat_id: meta.chat_id,
            version: meta.version,
        };
        self.send(conn, Payload::AcknowledgmentResponse(confirmation));
        Ok(())
    }
}
