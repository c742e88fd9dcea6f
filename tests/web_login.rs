//! Signing in under attack, against the real gateway binary: attempts
//! sent at once are counted before their password checks, the checks
//! running at once are bounded ("busy" beyond that), and login names have
//! a length limit. (`login_failures = 3` in the rig: an address gets 12.)

mod common;
#[path = "web/http.rs"]
mod http;
#[path = "common/modbus_sim.rs"]
mod modbus_sim;
#[path = "common/mosquitto.rs"]
mod mosquitto;
#[path = "web/peers.rs"]
mod peers;

use http::{Client, Resp, Seen};
use peers::Rig;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Barrier};

const GUARD_PW: &str = "guard-passw0rd-long";
const LOGIN_FAILURES: usize = 3;

/// `n` logins sent at once, each on its own connection; `who(i)` gives
/// the source address, name and password of the i-th.
fn burst(web: SocketAddr, n: usize, who: impl Fn(usize) -> (IpAddr, String, String)) -> Vec<Resp> {
    let seen: Seen = Default::default();
    let start = Arc::new(Barrier::new(n));
    let threads: Vec<_> = (0..n)
        .map(|i| {
            let (from, name, pw) = who(i);
            let (seen, start) = (seen.clone(), start.clone());
            std::thread::spawn(move || {
                let mut c = Client::from(web, &seen, from);
                start.wait();
                c.login(&name, &pw)
            })
        })
        .collect();
    threads.into_iter().map(|t| t.join().unwrap()).collect()
}

fn count(rs: &[Resp], status: u16) -> usize {
    rs.iter().filter(|r| r.status == status).count()
}

/// Status and body of each response, for a failed assertion.
fn show(rs: &[Resp]) -> Vec<String> {
    rs.iter()
        .map(|r| format!("{} {}", r.status, r.body))
        .collect()
}

const HERE: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

#[test]
fn logins_at_once_are_counted_and_bounded() {
    let Some(rig) = Rig::start("web-login-burst", &[("li", "guard", GUARD_PW)]) else {
        return;
    };
    let seen: Seen = Default::default();

    // 30 wrong passwords for one account at once (within the server's
    // 32 connections per address): no more than the allowance is
    // checked; the rest are refused before any check.
    let rs = burst(rig.web, 30, |_| {
        (HERE, "li".into(), "not the password".into())
    });
    let checked = count(&rs, 401);
    assert!(
        (1..=LOGIN_FAILURES).contains(&checked),
        "{checked} wrong passwords checked of 30 sent at once (allowance {LOGIN_FAILURES})"
    );
    assert_eq!(checked + count(&rs, 429), 30, "{:?}", show(&rs));
    assert!(rs
        .iter()
        .filter(|r| r.status == 429)
        .all(|r| r.header("retry-after").is_some()));

    // Many accounts at once from ten machines (three each, within every
    // allowance): no more checks run or wait than the gate holds; the
    // others are told to come back ("busy", Retry-After 1).
    let rs = burst(rig.web, 30, |i| {
        let from = IpAddr::V4(Ipv4Addr::new(127, 0, 1, 1 + (i % 10) as u8));
        (from, format!("ghost{i}"), "not a password at all".into())
    });
    let busy: Vec<&Resp> = rs
        .iter()
        .filter(|r| r.status == 429 && r.json()["busy"] == true)
        .collect();
    assert!(
        !busy.is_empty(),
        "no login was refused as busy: {:?}",
        show(&rs)
    );
    assert!(busy.iter().all(|r| r.header("retry-after") == Some("1")));
    assert_eq!(count(&rs, 401) + busy.len(), 30, "{:?}", show(&rs));

    // A name longer than any account's: 400, nothing checked or counted.
    let mut c = Client::new(rig.web, &seen);
    let long = c.login(&"x".repeat(64 << 10), "whatever it is");
    assert_eq!(long.status, 400, "{}", long.body);
    assert_eq!(c.login(&"y".repeat(33), "whatever it is").status, 400);
}

#[test]
fn a_stranger_cannot_lock_a_guard_out_nor_flood_the_audit_log() {
    let Some(rig) = Rig::start("web-login-lockout", &[("li", "guard", GUARD_PW)]) else {
        return;
    };
    let seen: Seen = Default::default();
    let stranger_ip = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
    let mut stranger = Client::from(rig.web, &seen, stranger_ip);
    for _ in 0..LOGIN_FAILURES {
        assert_eq!(stranger.login("li", "a wrong guess!").status, 401);
    }
    // The stranger is locked out of li, even with the right password …
    let locked = stranger.login("li", GUARD_PW);
    assert_eq!(locked.status, 429, "{}", locked.body);
    // … the guard at the gatehouse PC is not.
    let mut guard = Client::from(rig.web, &seen, HERE);
    let r = guard.login("li", GUARD_PW);
    assert_eq!(r.status, 200, "{}", r.body);
    // And the guard's success does not unlock the stranger.
    assert_eq!(stranger.login("li", GUARD_PW).status, 429);

    // A flood of refused logins is one audit entry, not one per request.
    for _ in 0..50 {
        assert_eq!(stranger.login("li", "a wrong guess!").status, 429);
    }
    let audit = std::fs::read_to_string(rig.gw.dir().join("journal/web-audit.jsonl")).unwrap();
    let lines = |what: &str| audit.lines().filter(|l| l.contains(what)).count();
    assert_eq!(lines("wrong name or password"), LOGIN_FAILURES, "{audit}");
    assert_eq!(lines("throttled"), 1, "one entry for 52 refusals: {audit}");
}
