//! Sessions: a random 256-bit token in an HttpOnly, SameSite=Strict cookie,
//! a CSRF token checked on every state-changing request, and idle expiry.
//! Pure state; the caller passes the current `Instant`.

use super::{Lang, Role};
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Most sessions kept at once; the least recently used goes first.
pub const MAX_SESSIONS: usize = 256;

/// Most sessions of one user; the user's own least recently used goes
/// first, so one account cannot sign everybody else out.
pub const MAX_SESSIONS_PER_USER: usize = 8;

/// One signed-in browser.
#[derive(Clone, Debug, PartialEq)]
pub struct Session {
    /// Public id for logs and the audit trail (not the cookie token).
    pub id: String,
    pub user: String,
    pub role: Role,
    pub lang: Lang,
    /// Sent back in the `X-CSRF-Token` header on state-changing requests.
    pub csrf: String,
    pub last_seen: Instant,
}

/// The live sessions, by cookie token.
#[derive(Debug)]
pub struct Sessions {
    idle: Duration,
    by_token: HashMap<String, Session>,
}

impl Sessions {
    pub fn new(idle: Duration) -> Sessions {
        Sessions {
            idle,
            by_token: HashMap::new(),
        }
    }

    /// Start a session; returns its cookie token and the session.
    pub fn create(
        &mut self,
        user: &str,
        role: Role,
        lang: Lang,
        now: Instant,
    ) -> (String, Session) {
        self.expire(now);
        let own = self.by_token.values().filter(|s| s.user == user).count();
        if own >= MAX_SESSIONS_PER_USER {
            self.drop_least_recent(|s| s.user == user);
        }
        // Reached only with more than MAX_SESSIONS / MAX_SESSIONS_PER_USER
        // users signed in.
        if self.by_token.len() >= MAX_SESSIONS {
            self.drop_least_recent(|_| true);
        }
        let token = super::random_hex(32);
        let s = Session {
            id: super::random_hex(6),
            user: user.to_string(),
            role,
            lang,
            csrf: super::random_hex(32),
            last_seen: now,
        };
        self.by_token.insert(token.clone(), s.clone());
        (token, s)
    }

    /// End the least recently used session among those `which` selects.
    fn drop_least_recent(&mut self, which: impl Fn(&Session) -> bool) {
        if let Some(oldest) = self
            .by_token
            .iter()
            .filter(|(_, s)| which(s))
            .min_by_key(|(_, s)| s.last_seen)
            .map(|(t, _)| t.clone())
        {
            self.by_token.remove(&oldest);
        }
    }

    /// The session of a cookie token, refreshed; `None` if unknown or idle
    /// too long (then it is gone).
    pub fn touch(&mut self, token: &str, now: Instant) -> Option<Session> {
        let idle = self.idle;
        let expired = match self.by_token.get_mut(token) {
            None => return None,
            Some(s) if now.saturating_duration_since(s.last_seen) > idle => true,
            Some(s) => {
                s.last_seen = now;
                return Some(s.clone());
            }
        };
        if expired {
            self.by_token.remove(token);
        }
        None
    }

    /// Whether the session of a token is still live, without refreshing it.
    pub fn alive(&self, token: &str, now: Instant) -> bool {
        self.by_token
            .get(token)
            .is_some_and(|s| now.saturating_duration_since(s.last_seen) <= self.idle)
    }

    /// End one session.
    pub fn remove(&mut self, token: &str) {
        self.by_token.remove(token);
    }

    /// End every session of a user (removed, or role changed).
    pub fn remove_user(&mut self, user: &str) {
        self.by_token.retain(|_, s| s.user != user);
    }

    /// Change the language of a user's sessions.
    pub fn set_lang(&mut self, user: &str, lang: Lang) {
        for s in self.by_token.values_mut().filter(|s| s.user == user) {
            s.lang = lang;
        }
    }

    /// Drop idle sessions.
    pub fn expire(&mut self, now: Instant) {
        let idle = self.idle;
        self.by_token
            .retain(|_, s| now.saturating_duration_since(s.last_seen) <= idle);
    }

    pub fn len(&self) -> usize {
        self.by_token.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_token.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_expiry_is_sliding() {
        let t0 = Instant::now();
        let mut s = Sessions::new(Duration::from_secs(60));
        let (tok, sess) = s.create("li", Role::Guard, Lang::ZhCn, t0);
        assert_ne!(tok, sess.csrf);
        assert!(s.touch(&tok, t0 + Duration::from_secs(50)).is_some());
        assert!(s.touch(&tok, t0 + Duration::from_secs(100)).is_some());
        assert!(s.alive(&tok, t0 + Duration::from_secs(160)));
        assert!(!s.alive(&tok, t0 + Duration::from_secs(161)));
        assert!(s.touch(&tok, t0 + Duration::from_secs(161)).is_none());
        assert!(s.touch(&tok, t0 + Duration::from_secs(162)).is_none());
        assert!(s.is_empty());
    }

    #[test]
    fn unknown_and_removed_tokens() {
        let t0 = Instant::now();
        let mut s = Sessions::new(Duration::from_secs(60));
        let (a, _) = s.create("li", Role::Guard, Lang::ZhCn, t0);
        let (b, _) = s.create("wang", Role::Technician, Lang::En, t0);
        assert!(s.touch("nope", t0).is_none());
        s.remove_user("li");
        assert!(s.touch(&a, t0).is_none());
        assert!(s.touch(&b, t0).is_some());
        s.remove(&b);
        assert!(s.touch(&b, t0).is_none());
    }

    #[test]
    fn bounded() {
        let t0 = Instant::now();
        let mut s = Sessions::new(Duration::from_secs(3600));
        let (first, _) = s.create("u0", Role::Viewer, Lang::ZhCn, t0);
        for i in 1..=MAX_SESSIONS {
            s.create(
                &format!("u{i}"),
                Role::Viewer,
                Lang::ZhCn,
                t0 + Duration::from_millis(i as u64),
            );
        }
        assert_eq!(s.len(), MAX_SESSIONS);
        assert!(s.touch(&first, t0 + Duration::from_secs(1)).is_none());
    }

    #[test]
    fn one_account_cannot_sign_others_out() {
        let t0 = Instant::now();
        let mut s = Sessions::new(Duration::from_secs(3600));
        let (guard, _) = s.create("li", Role::Guard, Lang::ZhCn, t0);
        let (first_own, _) = s.create("evil", Role::Viewer, Lang::ZhCn, t0);
        let mut last_own = String::new();
        for i in 1..=2 * MAX_SESSIONS {
            let at = t0 + Duration::from_millis(i as u64);
            last_own = s.create("evil", Role::Viewer, Lang::ZhCn, at).0;
        }
        let later = t0 + Duration::from_secs(1);
        assert!(
            s.touch(&guard, later).is_some(),
            "the guard stays signed in"
        );
        assert!(s.touch(&last_own, later).is_some());
        assert!(s.touch(&first_own, later).is_none(), "its own oldest went");
        assert_eq!(s.len(), 1 + MAX_SESSIONS_PER_USER);
    }
}
