//! One alarm's ISA-18.2 state machine with on/off delays. Pure: it never
//! builds events, it reports [`Transition`]s and the timer it wants.
//!
//! Three layers:
//! 1. `raw`: the condition as last observed on a good value (hysteresis
//!    already applied by the caller).
//! 2. `debounced`: `raw` after the on/off delay. A pending timer exists
//!    exactly when the condition is known and `raw != debounced`.
//! 3. `state`: the ISA-18.2 state, driven by `debounced` and by
//!    acknowledgements (see the table in [`crate::alarm`]).
//!
//! An unknown condition (bad quality, no value) freezes `debounced`, cancels
//! a pending delay and blocks the "back to normal" steps: unknown is never
//! taken for normal, and nothing is raised on it.

use crate::event::{AlarmState, EventKind};
use std::time::{Duration, Instant};

/// A state change to report as an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Transition {
    pub kind: EventKind,
    /// The state after the transition.
    pub state: AlarmState,
}

/// Up to two transitions from one step (an acknowledgement of a latched
/// alarm whose condition is already normal: acknowledged, then cleared).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Transitions {
    items: [Option<Transition>; 2],
}

impl Transitions {
    fn push(&mut self, kind: EventKind, state: AlarmState) {
        let t = Some(Transition { kind, state });
        if self.items[0].is_none() {
            self.items[0] = t;
        } else {
            self.items[1] = t;
        }
    }
    pub fn is_empty(&self) -> bool {
        self.items[0].is_none()
    }
    pub fn iter(&self) -> impl Iterator<Item = Transition> + '_ {
        self.items.iter().flatten().copied()
    }
}

/// The outcome of feeding the machine.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Step {
    pub transitions: Transitions,
    /// A new timer the caller must arm (call [`Core::fire`] at that instant).
    pub schedule: Option<Instant>,
}

/// Operator action refused by the state machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct NotUnacked;

/// State of one alarm.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct Core {
    state: AlarmState,
    raw: bool,
    debounced: bool,
    known: bool,
    pending: Option<Instant>,
    latching: bool,
    on_delay: Duration,
    off_delay: Duration,
    /// Shelved by an operator (ISA-18.2): state `Shelved`, nothing
    /// annunciated; the condition is still followed.
    shelved: bool,
}

impl Core {
    pub fn new(latching: bool, on_delay: Duration, off_delay: Duration) -> Core {
        Core {
            state: AlarmState::Normal,
            raw: false,
            debounced: false,
            known: false,
            pending: None,
            latching,
            on_delay,
            off_delay,
            shelved: false,
        }
    }

    pub fn is_shelved(&self) -> bool {
        self.shelved
    }

    /// Shelve the alarm: it leaves whatever state it was in (an unacked
    /// alarm needs no acknowledgement any more) and reports nothing until
    /// unshelved. Returns the `alarm.shelved` transition.
    pub fn shelve(&mut self) -> Transitions {
        let mut t = Transitions::default();
        self.shelved = true;
        self.state = AlarmState::Shelved;
        t.push(EventKind::AlarmShelved, AlarmState::Shelved);
        t
    }

    /// The shelf time is over: the alarm is judged afresh. An active
    /// condition raises it again; otherwise it is normal.
    pub fn unshelve(&mut self) -> Transitions {
        let mut t = Transitions::default();
        if !self.shelved {
            return t;
        }
        self.shelved = false;
        if self.debounced {
            self.state = AlarmState::ActiveUnacked;
            t.push(EventKind::AlarmShelved, AlarmState::ActiveUnacked);
            t.push(EventKind::AlarmRaised, AlarmState::ActiveUnacked);
        } else {
            self.state = AlarmState::Normal;
            t.push(EventKind::AlarmShelved, AlarmState::Normal);
        }
        t
    }

    pub fn state(&self) -> AlarmState {
        self.state
    }

    pub fn latching(&self) -> bool {
        self.latching
    }

    /// The condition as last observed (input to hysteresis).
    #[inline]
    pub fn raw(&self) -> bool {
        self.raw
    }

    /// The instant of the pending on/off delay, if any.
    pub fn pending(&self) -> Option<Instant> {
        self.pending
    }

    /// A new observation of the condition; `None` when it is unknown.
    pub fn observe(&mut self, now: Instant, cond: Option<bool>) -> Step {
        let mut step = Step::default();
        let Some(c) = cond else {
            self.known = false;
            self.raw = self.debounced;
            self.pending = None;
            return step;
        };
        self.known = true;
        if c == self.debounced {
            // Back where the debounced state is: a pending delay is void.
            self.raw = c;
            self.pending = None;
        } else if c != self.raw || self.pending.is_none() {
            // The condition just moved away from the debounced state.
            self.raw = c;
            let delay = if c { self.on_delay } else { self.off_delay };
            if delay.is_zero() {
                self.pending = None;
                self.set_debounced(c, &mut step.transitions);
            } else {
                let at = now + delay;
                self.pending = Some(at);
                step.schedule = Some(at);
            }
        }
        self.settle(&mut step.transitions);
        step
    }

    /// A timer armed for `at` is due. Stale timers (cancelled or re-armed
    /// for another instant) do nothing.
    pub fn fire(&mut self, at: Instant) -> Transitions {
        let mut t = Transitions::default();
        if self.pending != Some(at) {
            return t;
        }
        self.pending = None;
        self.set_debounced(self.raw, &mut t);
        self.settle(&mut t);
        t
    }

    /// An operator acknowledges the alarm.
    pub fn acknowledge(&mut self) -> Result<Transitions, NotUnacked> {
        let mut t = Transitions::default();
        match self.state {
            AlarmState::ActiveUnacked => {
                self.state = AlarmState::ActiveAcked;
                t.push(EventKind::AlarmAcknowledged, AlarmState::ActiveAcked);
                self.settle(&mut t);
            }
            AlarmState::ReturnedUnacked => {
                self.state = AlarmState::Normal;
                t.push(EventKind::AlarmAcknowledged, AlarmState::Normal);
            }
            AlarmState::Normal | AlarmState::ActiveAcked | AlarmState::Shelved => {
                return Err(NotUnacked)
            }
        }
        Ok(t)
    }

    /// What survives a restart: the state and the debounced condition.
    pub fn saved(&self) -> (AlarmState, bool) {
        (self.state, self.debounced)
    }

    /// Restore a saved state. The condition is unknown until the next good
    /// value; combinations the machine cannot reach are repaired.
    pub fn restore(&mut self, state: AlarmState, condition: bool) {
        let (state, debounced) = match (state, condition) {
            (AlarmState::ActiveUnacked, false) if !self.latching => {
                (AlarmState::ReturnedUnacked, false)
            }
            (AlarmState::ActiveUnacked | AlarmState::ActiveAcked, c) => (state, c),
            (AlarmState::ReturnedUnacked, _) => (AlarmState::ReturnedUnacked, false),
            (AlarmState::Normal | AlarmState::Shelved, _) => (AlarmState::Normal, false),
        };
        self.state = state;
        self.debounced = debounced;
        self.raw = debounced;
        self.known = false;
        self.pending = None;
    }

    /// Restore a shelved alarm (the caller knows the shelf is still on).
    pub fn restore_shelved(&mut self, condition: bool) {
        self.restore(AlarmState::Normal, false);
        self.debounced = condition;
        self.raw = condition;
        self.shelved = true;
        self.state = AlarmState::Shelved;
    }

    fn set_debounced(&mut self, c: bool, t: &mut Transitions) {
        self.debounced = c;
        if self.shelved {
            return;
        }
        match (c, self.state) {
            (true, AlarmState::Normal | AlarmState::ReturnedUnacked) => {
                self.state = AlarmState::ActiveUnacked;
                t.push(EventKind::AlarmRaised, AlarmState::ActiveUnacked);
            }
            (false, AlarmState::ActiveUnacked) if !self.latching => {
                self.state = AlarmState::ReturnedUnacked;
                t.push(EventKind::AlarmCleared, AlarmState::ReturnedUnacked);
            }
            _ => {}
        }
    }

    /// An acknowledged alarm whose condition is known to be normal (and not
    /// about to come back through a pending on-delay) returns to normal.
    fn settle(&mut self, t: &mut Transitions) {
        if self.shelved {
            return;
        }
        if self.state == AlarmState::ActiveAcked && self.known && !self.debounced && !self.raw {
            self.state = AlarmState::Normal;
            t.push(EventKind::AlarmCleared, AlarmState::Normal);
        }
    }
}
