//! Who is online where (SPEC SES): each EID's devices and the connection each
//! device's session runs on. One session per (eid, device).

use std::collections::BTreeMap;

use super::ConnId;

/// EID -> device -> connection.
#[derive(Debug, Default)]
pub struct Registry {
    online: BTreeMap<String, BTreeMap<String, ConnId>>,
}

impl Registry {
    /// The connection of a device's session.
    pub fn conn_of(&self, eid: &str, device: &str) -> Option<ConnId> {
        self.online.get(eid)?.get(device).copied()
    }

    /// Every (device, connection) of an EID, in device order.
    pub fn devices(&self, eid: &str) -> impl Iterator<Item = (&str, ConnId)> {
        self.online
            .get(eid)
            .into_iter()
            .flatten()
            .map(|(d, c)| (d.as_str(), *c))
    }

    /// How many devices of an EID are online.
    pub fn device_count(&self, eid: &str) -> usize {
        self.online.get(eid).map_or(0, BTreeMap::len)
    }

    /// Records a session; returns the connection it replaces, if any.
    pub fn insert(&mut self, eid: &str, device: &str, conn: ConnId) -> Option<ConnId> {
        self.online
            .entry(eid.to_string())
            .or_default()
            .insert(device.to_string(), conn)
    }

    /// Forgets a session if `conn` is still the device's current one.
    pub fn remove(&mut self, eid: &str, device: &str, conn: ConnId) -> bool {
        let Some(devices) = self.online.get_mut(eid) else {
            return false;
        };
        if devices.get(device) != Some(&conn) {
            return false;
        }
        devices.remove(device);
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
