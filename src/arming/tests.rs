use super::*;
use chrono::TimeZone;

fn cfg(zones: &str) -> ArmingConfig {
    toml::from_str(&format!("time_zone = \"Asia/Shanghai\"\n{zones}")).unwrap()
}

const PERIMETER: &str = r#"
[[zones]]
id = "perimeter-north"
[[zones.schedule]]
from = "22:00"
to = "06:00"
"#;

/// Shanghai local time (UTC+8, no daylight saving) as UTC.
fn sh(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> DateTime<Utc> {
    chrono::FixedOffset::east_opt(8 * 3600)
        .unwrap()
        .with_ymd_and_hms(y, mo, d, h, mi, 0)
        .unwrap()
        .with_timezone(&Utc)
}

#[test]
fn overnight_window_edges() {
    let w = Window::from_config(&WindowConfig {
        days: vec![],
        from: "22:00".into(),
        to: "06:00".into(),
    })
    .unwrap();
    let t = |h, m| {
        chrono::NaiveDate::from_ymd_opt(2026, 11, 27)
            .unwrap()
            .and_hms_opt(h, m, 0)
            .unwrap()
    };
    assert!(!w.contains(&t(21, 59)));
    assert!(w.contains(&t(22, 0)));
    assert!(w.contains(&t(23, 59)));
    assert!(w.contains(&t(0, 0)));
    assert!(w.contains(&t(5, 59)));
    assert!(!w.contains(&t(6, 0)));
    assert!(!w.contains(&t(12, 0)));
}

#[test]
fn start_days_of_an_overnight_window() {
    // Friday night only: armed Fri 22:00 → Sat 06:00.
    let w = Window::from_config(&WindowConfig {
        days: vec!["fri".into()],
        from: "22:00".into(),
        to: "06:00".into(),
    })
    .unwrap();
    // 2026-11-27 is a Friday.
    let d = |day, h| {
        chrono::NaiveDate::from_ymd_opt(2026, 11, day)
            .unwrap()
            .and_hms_opt(h, 0, 0)
            .unwrap()
    };
    assert!(!w.contains(&d(26, 23)), "Thursday night");
    assert!(
        !w.contains(&d(27, 3)),
        "Friday early morning belongs to Thursday"
    );
    assert!(w.contains(&d(27, 23)));
    assert!(w.contains(&d(28, 5)), "Saturday early morning");
    assert!(!w.contains(&d(28, 23)));
}

#[test]
fn parse_rejects_nonsense() {
    assert_eq!(parse_hhmm("22:00"), Some(1320));
    for bad in ["24:00", "7:00", "07:60", "0700", "", "ab:cd"] {
        assert_eq!(parse_hhmm(bad), None, "{bad}");
    }
    assert_eq!(parse_day("Sun"), Some(6));
    assert_eq!(parse_day("sunday"), None);
}

#[test]
fn schedule_arms_and_disarms_in_local_time() {
    let mut a = Arming::new(&cfg(PERIMETER));
    // First start at 12:00 Shanghai: disarmed as the schedule says.
    let c = a.tick(sh(2026, 11, 27, 12, 0));
    assert_eq!(c.len(), 1);
    assert_eq!(c[0].source, ChangeSource::Initial);
    assert!(!a.is_armed("perimeter-north"));
    assert!(a.tick(sh(2026, 11, 27, 21, 59)).is_empty());
    // 22:00 Shanghai is 14:00 UTC.
    let c = a.tick(Utc.with_ymd_and_hms(2026, 11, 27, 14, 0, 0).unwrap());
    assert_eq!(c.len(), 1);
    assert!(c[0].armed && c[0].source == ChangeSource::Schedule);
    assert!(a.is_armed("perimeter-north"));
    assert!(a.tick(sh(2026, 11, 28, 5, 59)).is_empty());
    let c = a.tick(sh(2026, 11, 28, 6, 0));
    assert_eq!(c.len(), 1);
    assert!(!c[0].armed);
    // Zones that are not arming zones are always armed.
    assert!(a.is_armed("villa-12"));
}

#[test]
fn manual_change_holds_until_the_next_edge() {
    let mut a = Arming::new(&cfg(PERIMETER));
    a.tick(sh(2026, 11, 27, 23, 0));
    assert!(a.is_armed("perimeter-north"));
    // A guard disarms at night for a patrol.
    let c = a
        .set(
            "perimeter-north",
            false,
            "guard/li",
            sh(2026, 11, 27, 23, 30),
        )
        .unwrap();
    assert_eq!(
        c.source,
        ChangeSource::Manual {
            operator: "guard/li".into()
        }
    );
    assert!(
        a.tick(sh(2026, 11, 28, 2, 0)).is_empty(),
        "schedule does not re-arm mid-window"
    );
    assert!(!a.is_armed("perimeter-north"));
    assert!(
        a.tick(sh(2026, 11, 28, 6, 0)).is_empty(),
        "already disarmed at the edge"
    );
    // Re-armed by the next evening's edge.
    let c = a.tick(sh(2026, 11, 28, 22, 0));
    assert!(c[0].armed);
    assert_eq!(
        a.set("perimeter-north", true, "x", sh(2026, 11, 28, 22, 1)),
        Err(ArmingError::Already {
            zone: "perimeter-north".into(),
            armed: true
        })
    );
    assert!(matches!(
        a.set("nope", true, "x", sh(2026, 11, 28, 22, 1)),
        Err(ArmingError::UnknownZone(_))
    ));
}

#[test]
fn restart_restores_state_and_applies_missed_edges() {
    let mut a = Arming::new(&cfg(PERIMETER));
    a.tick(sh(2026, 11, 27, 23, 0));
    a.set("perimeter-north", false, "guard", sh(2026, 11, 27, 23, 5))
        .unwrap();
    let snap = a.snapshot();

    // Back within the same window: the manual disarm holds.
    let mut b = Arming::new(&cfg(PERIMETER));
    assert_eq!(b.restore(&snap).unwrap(), 1);
    assert!(b.tick(sh(2026, 11, 28, 1, 0)).is_empty());
    assert!(!b.is_armed("perimeter-north"));

    // Down across the morning and back the next night: the evening edge
    // passed while down (saved schedule value: in window; now: in window
    // again, but the zone was disarmed by hand). No edge is seen, so the
    // manual disarm still holds; at 06:00 nothing changes, at 22:00 it arms.
    let mut c = Arming::new(&cfg(PERIMETER));
    c.restore(&snap).unwrap();
    assert!(c.tick(sh(2026, 11, 28, 12, 0)).is_empty());
    assert!(c.tick(sh(2026, 11, 28, 22, 0))[0].armed);

    // An armed zone whose window ended while the gateway was down is
    // disarmed at the first tick.
    let mut d = Arming::new(&cfg(PERIMETER));
    d.tick(sh(2026, 11, 27, 23, 0));
    let snap = d.snapshot();
    let mut e = Arming::new(&cfg(PERIMETER));
    e.restore(&snap).unwrap();
    assert!(e.is_armed("perimeter-north"));
    let ch = e.tick(sh(2026, 11, 28, 9, 0));
    assert_eq!(ch.len(), 1);
    assert!(!ch[0].armed && ch[0].source == ChangeSource::Schedule);
}

#[test]
fn zone_without_schedule_starts_as_configured_and_is_restored() {
    let c = cfg("[[zones]]\nid = \"villa-12\"\narmed_at_start = true\n");
    let mut a = Arming::new(&c);
    let ch = a.tick(sh(2026, 11, 27, 12, 0));
    assert_eq!(ch.len(), 1);
    assert!(a.is_armed("villa-12"));
    a.set("villa-12", false, "owner", sh(2026, 11, 27, 12, 1))
        .unwrap();
    // Without schedules the task does not tick: later ticks change nothing.
    assert!(!a.has_schedules());
    assert!(Arming::new(&cfg(PERIMETER)).has_schedules());
    for day in 27..30 {
        for hour in [0, 6, 12, 22] {
            assert!(a.tick(sh(2026, 11, day, hour, 0)).is_empty());
        }
    }
    assert!(!a.is_armed("villa-12"));
    let mut b = Arming::new(&c);
    b.restore(&a.snapshot()).unwrap();
    assert!(
        b.tick(sh(2026, 11, 28, 12, 0)).is_empty(),
        "no initial change after restore"
    );
    assert!(!b.is_armed("villa-12"));
    assert!(b
        .restore(&serde_json::json!({"version": 9, "zones": []}))
        .is_err());
}

proptest::proptest! {
    /// A window's membership is the same as a brute-force reading of
    /// "from its start day's `from` until `to` (next day when overnight)".
    #[test]
    fn window_matches_brute_force(from in 0u16..1440, to in 0u16..1440, day in 0usize..7, minute in 0u32..(7 * 1440)) {
        let mut days = [false; 7];
        days[day] = true;
        let w = Window { days, from, to };
        // 2026-11-23 is a Monday.
        let t = chrono::NaiveDate::from_ymd_opt(2026, 11, 23).unwrap().and_hms_opt(0, 0, 0).unwrap()
            + chrono::Duration::minutes(minute as i64);
        let start = day as u32 * 1440 + from as u32;
        let len = if to > from { (to - from) as u32 } else { 1440 - from as u32 + to as u32 };
        // The week wraps: Sunday night runs into Monday morning.
        let inside = |m: u32| (m + 7 * 1440 - start) % (7 * 1440) < len;
        proptest::prop_assert_eq!(w.contains(&t), inside(minute));
    }
}

#[test]
fn schedule_follows_local_time_across_a_dst_change() {
    // Europe/Berlin falls back from CEST (UTC+2) to CET (UTC+1) on
    // 2026-10-25 at 03:00 local: the night is an hour longer in UTC.
    let c: ArmingConfig =
        toml::from_str(&format!("time_zone = \"Europe/Berlin\"\n{}", PERIMETER)).unwrap();
    let mut a = Arming::new(&c);
    let utc = |d, h, m| Utc.with_ymd_and_hms(2026, 10, d, h, m, 0).unwrap();
    a.tick(utc(24, 12, 0));
    assert!(!a.is_armed("perimeter-north"));
    // 22:00 CEST = 20:00 UTC.
    assert!(a.tick(utc(24, 19, 59)).is_empty());
    assert!(a.tick(utc(24, 20, 0))[0].armed);
    // 06:00 CET = 05:00 UTC (not 04:00).
    assert!(a.tick(utc(25, 4, 30)).is_empty());
    assert!(a.is_armed("perimeter-north"));
    let c = a.tick(utc(25, 5, 0));
    assert!(!c[0].armed);
}

#[test]
fn local_time_uses_the_zone_rules() {
    let berlin = time_zone("Europe/Berlin").unwrap();
    // 2026-07-01 10:00 UTC is 12:00 CEST; 2026-12-01 10:00 UTC is 11:00 CET.
    let summer = Utc.with_ymd_and_hms(2026, 7, 1, 10, 0, 0).unwrap();
    let winter = Utc.with_ymd_and_hms(2026, 12, 1, 10, 0, 0).unwrap();
    assert_eq!(local_time(&berlin, summer).hour(), 12);
    assert_eq!(local_time(&berlin, winter).hour(), 11);
    let shanghai = time_zone("Asia/Shanghai").unwrap();
    let t = local_time(&shanghai, sh(2026, 11, 27, 23, 30));
    assert_eq!((t.day(), t.hour(), t.minute()), (27, 23, 30));
}

/// A minimal image without tzdata still knows every zone: the database is
/// compiled in as a fallback. (nextest runs each test in its own process,
/// so `TZDIR` set here reaches no other test.)
#[test]
fn time_zones_without_system_tzdata_come_from_the_bundle() {
    let empty = tempfile::tempdir().unwrap();
    std::env::set_var("TZDIR", empty.path());
    for name in ["Asia/Shanghai", "Europe/Berlin", "America/New_York", "UTC"] {
        let tz = time_zone(name).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(tz.iana_name(), Some(name));
    }
    assert!(time_zone("Mars/Olympus_Mons").is_err());
    std::env::remove_var("TZDIR");
}

#[test]
fn time_zone_names_cannot_leave_the_zoneinfo_directory() {
    let dir = tempfile::tempdir().unwrap();
    let zi = dir.path().join("zoneinfo");
    std::fs::create_dir(&zi).unwrap();
    // A readable TZif file outside the zone directory.
    std::fs::copy("/usr/share/zoneinfo/Asia/Tokyo", dir.path().join("Secret"))
        .map(|_| ())
        .or_else(|_| std::fs::write(dir.path().join("Secret"), b"TZif"))
        .unwrap();
    std::env::set_var("TZDIR", &zi);
    for name in ["../Secret", "/etc/passwd", "Asia/../../Secret", ""] {
        assert!(time_zone(name).is_err(), "{name:?} accepted");
    }
    std::env::remove_var("TZDIR");
}

#[test]
fn unknown_time_zone_is_a_config_error() {
    let text = r#"
[site]
id = "palm-bay"
gateway = "gw-north-1"

[uplink]
host = "127.0.0.1"

[arming]
time_zone = "Mars/Olympus_Mons"
"#;
    let Err(err) = crate::config::load_str(text, std::path::Path::new("gw.toml")) else {
        panic!("an unknown zone is accepted");
    };
    let err = err.to_string();
    assert!(
        err.contains("arming.time_zone") && err.contains("Mars/Olympus_Mons"),
        "{err}"
    );
}
