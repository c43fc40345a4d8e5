//! Operator push notifications (SPEC §18): delivered live to every online
//! device of one user, never queued (PUSH-3). How an operator triggers one is
//! outside the protocol; the reference server offers `POST /push` on its admin
//! endpoint.

use std::collections::BTreeMap;

use super::Millis;
use super::auth::valid_eid;
use super::engine::Engine;
use crate::codec::ErrorKind;
use crate::proto::PushNotification;
use crate::proto::message_scheme::Payload;

impl Engine {
    /// Sends a PushNotification to every online device of `eid`; returns how
    /// many devices it reached. Refuses what SPEC forbids (PUSH-2, PUSH-5).
    pub fn push(
        &mut self,
        eid: &str,
        kind: &str,
        data: BTreeMap<String, String>,
        now: Millis,
    ) -> Result<usize, ErrorKind> {
        let data_ok = data
            .iter()
            .all(|(k, v)| (1..=256).contains(&k.len()) && (1..=4096).contains(&v.len()));
        if !valid_eid(eid) || !(1..=64).contains(&kind.len()) || !data_ok {
            return Err(ErrorKind::InvalidField);
        }
        Ok(self.send_to_devices(eid, |engine, to| {
            Payload::PushNotification(PushNotification {
                id: engine.fresh_id("n", now),
                from: None,
                to: Some(to),
                r#type: kind.to_string(),
                timestamp: now,
                data: data.clone(),
            })
        }))
    }
}
