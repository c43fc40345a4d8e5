//! Visibility and location sharing settings (SPEC §13): per user, durable.

use super::engine::{Engine, Handled, Rejection, request_only};
use super::social::{SHARING_OFF, SocialEvent};
use super::{ConnId, Millis};
use crate::codec::ErrorKind;
use crate::proto::message_scheme::Payload;
use crate::proto::{AwarenessVisibility, Identity};

impl Engine {
    /// VIS-1..4, LOC-4 (turning sharing off drops the fix).
    pub(super) fn on_visibility(&mut self, conn: ConnId, mut request: AwarenessVisibility, now: Millis) -> Handled {
        request_only(request.r#type, "AwarenessVisibility")?;
        if !(0..=3).contains(&request.visibility) || !(0..=2).contains(&request.location_sharing) {
            let rejection = Rejection::new(ErrorKind::InvalidField, "visibility 0..=3, location_sharing 0..=2");
            return Err(rejection.with_ref(&request.id));
        }
        self.claim(conn, &mut request.from, "from")
            .map_err(|r| r.with_ref(&request.id))?;
        let Some(me) = self.identity(conn).map(|i| i.eid.to_string()) else {
            return Ok(());
        };
        let (visibility, sharing) = self.social.settings(&me);
        let visibility_now = if request.visibility == 0 {
            visibility
        } else {
            request.visibility
        };
        let sharing_now = if request.location_sharing == 0 {
            sharing
        } else {
            request.location_sharing
        };
        let answer = AwarenessVisibility {
            id: request.id,
            from: Some(Identity {
                eid: me.clone(),
                connection_resource_id: String::new(),
            }),
            r#type: 2,
            visibility: visibility_now,
            location_sharing: sharing_now,
            status: 1,
            message: "settings in force".into(),
            timestamp: now,
        };
        self.change_audience(&[&me], now, |engine| {
            if (visibility_now, sharing_now) != (visibility, sharing) {
                let event = SocialEvent::Settings {
                    eid: me.clone(),
                    visibility: visibility_now,
                    location_sharing: sharing_now,
                };
                engine.record(event)?;
            }
            if sharing_now == SHARING_OFF {
                engine.awareness.fixes.remove(&me);
            }
            engine.send(conn, Payload::AwarenessVisibility(answer));
            Ok(())
        })
    }
}
