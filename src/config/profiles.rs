//! Device profiles: a device naming `profile = "…"` gets the profile's
//! points before its own, at load time. The rest of the gateway sees plain
//! devices; validation reports a profile point's problems at the profile.

use super::validate::{is_valid_id, Finding, ID_RULE};
use super::{Config, KeyPath};
use std::collections::HashMap;

/// Where each point of each device came from: `origins[device]` says how
/// many of its first points are its profile's (and which profile).
pub(super) type Origins = Vec<Origin>;

/// The source of one device's points.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Origin {
    /// Profile index and how many points came from it (they come first).
    pub profile: Option<(usize, usize)>,
}

impl Origin {
    /// Key path of the definition of point `i` of device `device`:
    /// `profiles[k].points[m]` or `devices[d].points[n]`.
    pub(super) fn point_key(&self, device: usize, i: usize) -> KeyPath {
        match self.profile {
            Some((k, n)) if i < n => KeyPath::root()
                .key("profiles")
                .index(k)
                .key("points")
                .index(i),
            Some((_, n)) => KeyPath::root()
                .key("devices")
                .index(device)
                .key("points")
                .index(i - n),
            None => KeyPath::root()
                .key("devices")
                .index(device)
                .key("points")
                .index(i),
        }
    }
}

/// Expand profiles into devices; returns the points' origins and the
/// problems found with profiles themselves.
pub(super) fn expand(c: &mut Config) -> (Origins, Vec<Finding>) {
    let root = KeyPath::root();
    let mut findings = Vec::new();
    let mut by_id: HashMap<String, usize> = HashMap::new();
    for (pi, p) in c.profiles.iter().enumerate() {
        let k = root.key("profiles").index(pi);
        if !is_valid_id(&p.id) {
            findings.push(Finding::error(k.key("id"), format!("{:?} {ID_RULE}", p.id)));
        } else if let Some(prev) = by_id.insert(p.id.clone(), pi) {
            findings.push(Finding::error(
                k.key("id"),
                format!("duplicate profile id {:?} (also profiles[{prev}])", p.id),
            ));
        }
    }
    let mut origins = Vec::with_capacity(c.devices.len());
    for (di, d) in c.devices.iter_mut().enumerate() {
        let Some(name) = &d.profile else {
            origins.push(Origin::default());
            continue;
        };
        let Some(&pi) = by_id.get(name) else {
            findings.push(Finding::error(
                root.key("devices").index(di).key("profile"),
                format!("no [[profiles]] with id {name:?}"),
            ));
            origins.push(Origin::default());
            continue;
        };
        let profile = &c.profiles[pi];
        let mut points = Vec::with_capacity(profile.points.len() + d.points.len());
        points.extend(profile.points.iter().cloned());
        points.append(&mut d.points);
        d.points = points;
        origins.push(Origin {
            profile: Some((pi, profile.points.len())),
        });
    }
    (origins, findings)
}
