//! Live location (SPEC §14): forwarded to allowed viewers only, kept in memory
//! as the latest fix, never stored, queued or replayed.

use super::auth::valid_eid;
use super::engine::{Engine, Handled, Rejection};
use super::shard::Letter;
use super::social::SHARING_ON;
use super::{ConnId, Millis};
use crate::codec::ErrorKind;
use crate::proto::LocationStream;
use crate::proto::message_scheme::Payload;

impl Engine {
    /// Keeps a user's latest fix (LOC-4) and forwards it to this shard's devices of the users allowed to see it:
    /// `peer` only, or every subscriber (LOC-2, LOC-3). `fix.from` names the user.
    pub(super) fn fix_replica(&mut self, fix: LocationStream, peer: Option<String>) {
        let Some(owner) = fix.from.as_ref().map(|f| f.eid.clone()) else {
            return;
        };
        self.awareness
            .fixes
            .insert(owner.clone(), (fix.latitude, fix.longitude));
        let mut viewers: Vec<String> = match peer {
            None => self.social.subscribers_of(&owner).map(str::to_string).collect(),
            Some(peer) => vec![peer],
        };
        viewers.retain(|v| self.shard.owns(v) && self.social.may_see_location(v, &owner));
        for viewer in &viewers {
            self.send_to_devices(viewer, |_, to| {
                Payload::LocationStream(LocationStream {
                    to: Some(to),
                    ..fix.clone()
                })
            });
        }
    }

    /// LOC-1..6.
    pub(super) fn on_location(&mut self, conn: ConnId, mut fix: LocationStream, _now: Millis) -> Handled {
        let ref_id = fix.id.clone();
        self.claim(conn, &mut fix.from, "from")
            .map_err(|r| r.with_ref(&ref_id))?;
        let Some(me) = self.identity(conn).cloned() else {
            return Ok(());
        };
        let in_range = fix.latitude.is_finite()
            && fix.longitude.is_finite()
            && fix.altitude.is_finite()
            && (-90.0..=90.0).contains(&fix.latitude)
            && (-180.0..=180.0).contains(&fix.longitude);
        let peer = fix.to.as_ref().map(|t| t.eid.clone()).unwrap_or_default();
        if !in_range || (!peer.is_empty() && (!valid_eid(&peer) || peer == *me.eid)) {
            let rejection = Rejection::new(
                ErrorKind::InvalidField,
                "coordinates out of range, or `to` is not another user",
            );
            return Err(rejection.with_ref(&ref_id));
        }
        if self.social.settings(&me.eid).1 != SHARING_ON {
            return Err(Rejection::new(ErrorKind::Forbidden, "location sharing is off").with_ref(&ref_id));
        }
        // `claim` filled `from`: the replicas learn whose fix it is from it.
        let peer = Some(peer).filter(|p| !p.is_empty());
        self.fix_replica(fix.clone(), peer.clone());
        self.broadcast(Letter::Fix {
            fix: Box::new(fix),
            peer,
        });
        Ok(())
    }
}
