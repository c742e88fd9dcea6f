//! Who may use the local web page: accounts ([`users`]; who the account
//! commands act as: [`owner`]), sessions with
//! idle expiry and a CSRF token each ([`session`]), login throttling
//! ([`throttle`]) and the bound on password checks running at once
//! ([`gate`]). Sessions and throttles are pure state over an injected
//! `Instant`, so tests need no real clock.

pub mod gate;
pub mod owner;
pub mod session;
pub mod throttle;
pub mod users;

pub use gate::LoginGate;
pub use session::{Session, Sessions};
pub use throttle::{Refused, Report, Throttle};
pub use users::{Lang, Role, SetupToken, UserError, UserInfo, UserStore};

use ring::rand::SecureRandom;

/// Fill `buf` from the system's CSPRNG.
pub fn random_bytes(buf: &mut [u8]) {
    // The system RNG fails only when the OS has none: nothing secure can
    // run then, so the gateway stops rather than hand out guessable ids.
    ring::rand::SystemRandom::new()
        .fill(buf)
        .expect("the system random number generator failed");
}

/// `n` random bytes as lowercase hex.
pub fn random_hex(n: usize) -> String {
    let mut b = vec![0u8; n];
    random_bytes(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Compare secrets in time independent of where they differ.
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ct_eq_matches_eq() {
        assert!(ct_eq(b"abc", b"abc"));
        assert!(!ct_eq(b"abc", b"abd"));
        assert!(!ct_eq(b"abc", b"abcd"));
    }

    #[test]
    fn random_hex_is_fresh() {
        let a = random_hex(16);
        assert_eq!(a.len(), 32);
        assert_ne!(a, random_hex(16));
    }
}
