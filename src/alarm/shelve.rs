//! Shelving (ISA-18.2): an operator suppresses an alarm for a limited time.

use super::{emit, AlarmEngine, AlarmError};
use crate::event::{NewEvent, Timestamp};
use std::time::{Duration, Instant};

impl AlarmEngine {
    /// Shelve the alarm `key` for `duration`. Life-safety alarms (fire,
    /// priority 1) are refused. Shelving a shelved alarm sets a new end.
    #[allow(clippy::too_many_arguments)]
    pub fn shelve(
        &mut self,
        now: Instant,
        ts: Timestamp,
        key: &str,
        duration: Duration,
        operator: &str,
        comment: Option<&str>,
        out: &mut Vec<NewEvent>,
    ) -> Result<(), AlarmError> {
        let Some(&i) = self.by_key.get(key) else {
            return Err(AlarmError::UnknownAlarm(key.to_string()));
        };
        let alarm = &mut self.alarms[i as usize];
        if alarm.def.life_safety {
            return Err(AlarmError::NotShelvable(key.to_string()));
        }
        let until_ts = chrono::Duration::from_std(duration)
            .ok()
            .and_then(|d| ts.0.checked_add_signed(d))
            .map(Timestamp)
            .unwrap_or(ts);
        let t = alarm.core.shelve();
        alarm.shelved_until = Some((Some(now + duration), until_ts));
        self.dirty.alarm(i);
        alarm.quiet = false;
        if !self.shelved.contains(&i) {
            self.shelved.push(i);
        }
        tracing::info!(key, operator, until = %until_ts, "alarm shelved");
        let detail = serde_json::json!({
            "shelved_until": until_ts,
            "duration_s": duration.as_secs_f64(),
        });
        emit(
            alarm,
            &self.armed,
            t,
            ts,
            Some(operator),
            comment,
            Some(detail),
            out,
        );
        Ok(())
    }

    /// End the shelves that are over.
    pub(super) fn tick_shelves(&mut self, now: Instant, ts: Timestamp, out: &mut Vec<NewEvent>) {
        if self.shelved.is_empty() {
            return;
        }
        let mut k = 0;
        while k < self.shelved.len() {
            let i = self.shelved[k];
            let alarm = &mut self.alarms[i as usize];
            let Some((at, until_ts)) = alarm.shelved_until else {
                self.shelved.swap_remove(k);
                continue;
            };
            // Restored shelves get their instant from the wall clock.
            let at = at.unwrap_or_else(|| {
                let left = (until_ts.0 - ts.0).to_std().unwrap_or(Duration::ZERO);
                now + left
            });
            alarm.shelved_until = Some((Some(at), until_ts));
            if at > now {
                k += 1;
                continue;
            }
            alarm.shelved_until = None;
            self.shelved.swap_remove(k);
            self.dirty.alarm(i);
            let t = alarm.core.unshelve();
            tracing::info!(key = %alarm.def.key, state = ?alarm.core.state(), "alarm shelf time over");
            let detail = serde_json::json!({"unshelved": "expired"});
            emit(alarm, &self.armed, t, ts, None, None, Some(detail), out);
        }
    }

    /// When the next shelf ends (restored shelves: not known before a tick).
    pub(super) fn next_unshelve(&self) -> Option<Instant> {
        self.shelved
            .iter()
            .filter_map(|&i| self.alarms[i as usize].shelved_until)
            .filter_map(|(at, _)| at)
            .min()
    }

    /// True while the alarm `key` is shelved.
    pub fn is_shelved(&self, key: &str) -> bool {
        self.by_key
            .get(key)
            .is_some_and(|&i| self.alarms[i as usize].core.is_shelved())
    }
}
