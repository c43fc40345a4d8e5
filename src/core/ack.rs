//! Acknowledgments (SPEC §16): a message's one state moves forward only; every
//! raise reaches the sender's devices and the receiver's other devices through
//! the queues; the acking device always gets a confirmation. The same stanza
//! confirms queue items (QUE-4), also when it is refused for a block (QUE-13).
//!
//! The acking device's shard checks the stanza; the chat's home decides
//! ([`Engine::acknowledge`]), and its answer carries the queue items to
//! confirm back to the device's shard.

use super::engine::{Engine, Handled, Rejection};
use super::queue::{ChatEvent, Confirm, QueueItem, StateRaised};
use super::shard::{Answer, Letter, Origin};
use super::{ConnId, Millis, SessionIdentity};
use crate::codec::{ErrorKind, Route};
use crate::proto::AcknowledgmentRequest;
use crate::proto::AcknowledgmentResponse;
use crate::proto::message_scheme::Payload;

const SENT: i32 = 4;

/// An acknowledgment on its way from the acking device's shard to the chat's home.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct Acknowledgment {
    pub origin: Origin,
    pub me: SessionIdentity,
    pub message_id: String,
    pub status: i32,
    pub timestamp: Millis,
    /// The acking session's highest increment when the stanza arrived (QUE-5).
    pub upto: u64,
}

fn not_found() -> Rejection {
    Rejection::new(ErrorKind::NotFound, "no such message for you")
}

impl Engine {
    pub(super) fn on_ack(&mut self, conn: ConnId, mut request: AcknowledgmentRequest, now: Millis) -> Handled {
        let message_id = request.message_id.clone();
        self.claim(conn, &mut request.from, "from")
            .map_err(|r| r.with_ref(&message_id))?;
        if !(2..=4).contains(&request.status) {
            return Err(Rejection::new(ErrorKind::InvalidField, "status must be 2, 3 or 4").with_ref(&message_id));
        }
        let Some(me) = self.identity(conn).cloned() else {
            return Ok(());
        };
        // Message ids are `{chat}/{version}` (CHAT-8): the chat names the home that knows the message.
        let Some((chat, _)) = message_id.rsplit_once('/') else {
            return Err(not_found().with_ref(&message_id));
        };
        self.reachable(&[chat]).map_err(|r| r.with_ref(&message_id))?;
        let home = self.shard.home_of(chat);
        let mut ack = Acknowledgment {
            origin: self.origin(conn),
            me,
            message_id,
            status: request.status,
            timestamp: request.timestamp,
            upto: self
                .with_session(conn, |s| s.delivered.as_ref().map_or(0, |d| d.last))
                .unwrap_or(0),
        };
        if home == self.shard.index {
            self.acknowledge(ack, now);
        } else {
            ack.origin.seq = Some(self.await_answer(conn, home));
            self.mail(home, Letter::Acknowledge(Box::new(ack)));
        }
        Ok(())
    }

    /// ACK-1..6 on the chat's home: who may acknowledge, the block check, the durable raise and its updates to
    /// both users' queues, and the confirmation to the acking device.
    pub(super) fn acknowledge(&mut self, ack: Acknowledgment, now: Millis) {
        let Acknowledgment {
            origin,
            me,
            message_id,
            status,
            timestamp,
            upto,
        } = ack;
        let answer = |confirm: Option<Confirm>, result: Result<Payload, Rejection>| Answer {
            origin,
            route: Route::AcknowledgmentRequest.number(),
            reference: message_id.clone(),
            confirm,
            result,
        };
        let Some(meta) = self.chat.message(&message_id) else {
            return self.answer(answer(None, Err(not_found())), now);
        };
        let receiver_side = meta.receiver == me.eid;
        if !receiver_side && meta.sender != me.eid {
            return self.answer(answer(None, Err(not_found())), now);
        }
        if receiver_side && status == SENT {
            let rejection = Rejection::new(ErrorKind::InvalidField, "a receiver acknowledges 2 or 3");
            return self.answer(answer(None, Err(rejection)), now);
        }
        let confirm = Some(Confirm {
            message_id: message_id.clone(),
            status,
            receiver_side,
            upto,
        });
        if self.social.blocked_pair(&meta.sender, &meta.receiver) {
            let rejection = Rejection::new(ErrorKind::Blocked, "a block stands between sender and receiver");
            return self.answer(answer(confirm, Err(rejection)), now);
        }
        if let Err(rejection) = self.reachable(&[&meta.sender, &meta.receiver]) {
            return self.answer(answer(confirm, Err(rejection)), now);
        }
        let at = if timestamp > 0 { timestamp } else { now };
        let mut items = Vec::new();
        if receiver_side && status > meta.state {
            let raised = ChatEvent::StateRaised(StateRaised {
                message_id: message_id.clone(),
                state: status,
                at,
            });
            if let Err(e) = self.chat_store.record(&raised) {
                let rejection = Rejection::new(ErrorKind::Unavailable, format!("could not store: {e}"));
                return self.answer(answer(confirm, Err(rejection)), now);
            }
            self.chat.apply(&raised);
            self.mark_unsynced();
            let update = AcknowledgmentResponse {
                from: Some(me.to_proto()),
                to: None,
                message_id: message_id.clone(),
                status,
                timestamp: at,
                chat_id: meta.chat_id.to_string(),
                version: meta.version,
            };
            let to_sender = QueueItem::new(None, Payload::AcknowledgmentResponse(update.clone()));
            let to_receiver = QueueItem::new(Some(me.device.to_string()), Payload::AcknowledgmentResponse(update));
            items.push((meta.sender.to_string(), to_sender));
            items.push((meta.receiver.to_string(), to_receiver));
        }
        let (recorded, state_at) = self
            .chat
            .message(&message_id)
            .map_or((meta.state, at), |m| (m.state, m.state_at));
        // ACK-7: SENT was reached when the message was accepted, whatever state it has reached since.
        let (status, timestamp) = if !receiver_side && status == SENT {
            (SENT, meta.accepted_at)
        } else {
            (recorded, state_at)
        };
        let confirmation = AcknowledgmentResponse {
            from: Some(me.to_proto()),
            to: Some(me.to_proto()),
            message_id: message_id.clone(),
            status,
            timestamp,
            chat_id: meta.chat_id.to_string(),
            version: meta.version,
        };
        let answer = answer(confirm, Ok(Payload::AcknowledgmentResponse(confirmation)));
        self.append_then_answer(items, answer, now);
    }
}
