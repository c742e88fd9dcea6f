//! Device profiles: a device naming `profile = "…"` gets the profile's
//! points before its own, at load time. The rest of the gateway sees plain
//! devices; validation reports a profile point's problems at the profile.

use super::validate::{is_valid_id, Finding, ID_RULE};
use super::{Config, KeyPath};
use std::collections::HashMap;

/// Where each point of each device came from: `origins[device][point]` is
/// the key path of its definition (`profiles[k].points[m]` or
/// `devices[i].points[n]`).
pub(super) type Origins = Vec<Vec<KeyPath>>;

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
        let dk = root.key("devices").index(di);
        let own: Vec<KeyPath> = (0..d.points.len())
            .map(|i| dk.key("points").index(i))
            .collect();
        let Some(name) = &d.profile else {
            origins.push(own);
            continue;
        };
        let Some(&pi) = by_id.get(name) else {
            findings.push(Finding::error(
                dk.key("profile"),
                format!("no [[profiles]] with id {name:?}"),
            ));
            origins.push(own);
            continue;
        };
        let profile = &c.profiles[pi];
        let pk = root.key("profiles").index(pi);
        let mut points = profile.points.clone();
        let mut from: Vec<KeyPath> = (0..points.len())
            .map(|i| pk.key("points").index(i))
            .collect();
        points.append(&mut d.points);
        from.extend(own);
        d.points = points;
        origins.push(from);
    }
    (origins, findings)
}
