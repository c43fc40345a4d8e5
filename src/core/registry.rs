//! Who is online where (SPEC SES): each EID's devices and the connection each
//! device's session runs on. One session per (eid, device).

use std::collections::BTreeMap;
use std::sync::Arc;

use smallvec::SmallVec;

use super::ConnId;

/// EID -> its devices' connections. A user has a handful of devices (SES-3:
/// ten at most), so each user's are a small list sorted by device rather
/// than a map: a map would allocate a whole tree node per online user. The
/// first device lives inline: one device, no allocation.
type Devices = SmallVec<[(Arc<str>, ConnId); 1]>;

#[derive(Debug, Default)]
pub struct Registry {
    /// Keyed by the session identity's own EID: no copy of it per user.
    online: BTreeMap<Arc<str>, Devices>,
}

impl Registry {
    /// The connection of a device's session.
    pub fn conn_of(&self, eid: &str, device: &str) -> Option<ConnId> {
        let devices = self.online.get(eid)?;
        let at = devices.binary_search_by(|(d, _)| (**d).cmp(device)).ok()?;
        Some(devices[at].1)
    }

    /// Every (device, connection) of an EID, in device order.
    pub fn devices(&self, eid: &str) -> impl Iterator<Item = (&str, ConnId)> {
        self.online.get(eid).into_iter().flatten().map(|(d, c)| (&**d, *c))
    }

    /// How many devices of an EID are online.
    pub fn device_count(&self, eid: &str) -> usize {
        self.online.get(eid).map_or(0, |devices| devices.len())
    }

    /// Records a session; returns the connection it replaces, if any.
    pub fn insert(&mut self, eid: &Arc<str>, device: Arc<str>, conn: ConnId) -> Option<ConnId> {
        let devices = self.online.entry(Arc::clone(eid)).or_default();
        match devices.binary_search_by(|(d, _)| d.cmp(&device)) {
            Ok(at) => Some(std::mem::replace(&mut devices[at].1, conn)),
            Err(at) => {
                devices.insert(at, (device, conn));
                None
            }
        }
    }

    /// Forgets a session if `conn` is still the device's current one.
    pub fn remove(&mut self, eid: &str, device: &str, conn: ConnId) -> bool {
        let Some(devices) = self.online.get_mut(eid) else {
            return false;
        };
        let Ok(at) = devices.binary_search_by(|(d, _)| (**d).cmp(device)) else {
            return false;
        };
        if devices[at].1 != conn {
            return false;
        }
        devices.remove(at);
        if devices.is_empty() {
            self.online.remove(eid);
        }
        true
    }

    /// Number of EIDs with at least one session.
    pub fn users_online(&self) -> usize {
        self.online.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_stay_sorted_and_replacement_returns_the_old_connection() {
        let mut r = Registry::default();
        let eid: Arc<str> = "a@x".into();
        assert_eq!(r.insert(&eid, "tablet".into(), ConnId(1)), None);
        assert_eq!(r.insert(&eid, "phone".into(), ConnId(2)), None);
        assert_eq!(r.insert(&eid, "tablet".into(), ConnId(3)), Some(ConnId(1)));
        let devices: Vec<_> = r.devices("a@x").collect();
        assert_eq!(devices, [("phone", ConnId(2)), ("tablet", ConnId(3))]);
        assert_eq!(r.conn_of("a@x", "tablet"), Some(ConnId(3)));
        // A replaced session is no longer the device's: removing it changes nothing (SES-2).
        assert!(!r.remove("a@x", "tablet", ConnId(1)));
        assert!(r.remove("a@x", "tablet", ConnId(3)));
        assert!(r.remove("a@x", "phone", ConnId(2)));
        assert_eq!((r.device_count("a@x"), r.users_online()), (0, 0));
    }
}
