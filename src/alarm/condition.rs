//! Alarm conditions: does a value put a rule in alarm? Includes hysteresis,
//! which needs the condition's previous state.

use crate::point::Value;

/// What a state rule (`equals`) compares against.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) enum Target {
    Bool(bool),
    Int(i64),
    Float(f64),
}

impl Target {
    /// From the rule's TOML value; `None` for a type a rule cannot hold.
    pub(super) fn from_toml(v: &toml::Value) -> Option<Target> {
        match *v {
            toml::Value::Boolean(b) => Some(Target::Bool(b)),
            toml::Value::Integer(i) => Some(Target::Int(i)),
            toml::Value::Float(f) if f.is_finite() => Some(Target::Float(f)),
            _ => None,
        }
    }
}

/// The condition of one rule.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) enum Condition {
    /// In alarm while the value equals the target.
    Equals(Target),
    /// In alarm once value > `limit`; back to normal once value < `limit - hysteresis`.
    High { limit: f64, hysteresis: f64 },
    /// In alarm once value < `limit`; back to normal once value > `limit + hysteresis`.
    Low { limit: f64, hysteresis: f64 },
}

impl Condition {
    /// Evaluate `value` given whether the condition held before (`active`).
    /// `None` when the value cannot be judged (NaN): unknown is not normal.
    #[inline]
    pub(super) fn eval(&self, value: Value, active: bool) -> Option<bool> {
        if let Value::Float(f) = value {
            if f.is_nan() {
                return None;
            }
        }
        Some(match *self {
            Condition::Equals(target) => match (target, value) {
                (Target::Bool(t), Value::Bool(v)) => v == t,
                (Target::Bool(t), v) => (v.as_f64() != 0.0) == t,
                (Target::Int(t), Value::Int(v)) => v == t,
                (Target::Int(t), v) => v.as_f64() == t as f64,
                (Target::Float(t), v) => v.as_f64() == t,
            },
            Condition::High { limit, hysteresis } => {
                let x = value.as_f64();
                if active {
                    x >= limit - hysteresis
                } else {
                    x > limit
                }
            }
            Condition::Low { limit, hysteresis } => {
                let x = value.as_f64();
                if active {
                    x <= limit + hysteresis
                } else {
                    x < limit
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equals_bool_and_codes() {
        let c = Condition::Equals(Target::Bool(true));
        assert_eq!(c.eval(Value::Bool(true), false), Some(true));
        assert_eq!(c.eval(Value::Bool(false), true), Some(false));
        let c = Condition::Equals(Target::Bool(false));
        assert_eq!(c.eval(Value::Bool(false), false), Some(true));
        let c = Condition::Equals(Target::Int(3));
        assert_eq!(c.eval(Value::Int(3), false), Some(true));
        assert_eq!(c.eval(Value::Int(4), false), Some(false));
        assert_eq!(c.eval(Value::Float(3.0), false), Some(true));
        let c = Condition::Equals(Target::Float(2.5));
        assert_eq!(c.eval(Value::Float(2.5), false), Some(true));
        assert_eq!(c.eval(Value::Float(f64::NAN), false), None);
    }

    #[test]
    fn high_with_hysteresis() {
        let c = Condition::High {
            limit: 30.0,
            hysteresis: 2.0,
        };
        assert_eq!(c.eval(Value::Float(30.0), false), Some(false));
        assert_eq!(c.eval(Value::Float(30.1), false), Some(true));
        // Inside the band the previous state holds.
        assert_eq!(c.eval(Value::Float(29.0), true), Some(true));
        assert_eq!(c.eval(Value::Float(28.0), true), Some(true));
        assert_eq!(c.eval(Value::Float(27.9), true), Some(false));
        assert_eq!(c.eval(Value::Int(31), false), Some(true));
        assert_eq!(c.eval(Value::Float(f64::NAN), true), None);
    }

    #[test]
    fn low_with_hysteresis() {
        let c = Condition::Low {
            limit: 5.0,
            hysteresis: 1.0,
        };
        assert_eq!(c.eval(Value::Float(5.0), false), Some(false));
        assert_eq!(c.eval(Value::Float(4.9), false), Some(true));
        assert_eq!(c.eval(Value::Float(6.0), true), Some(true));
        assert_eq!(c.eval(Value::Float(6.1), true), Some(false));
    }

    #[test]
    fn zero_hysteresis_clears_below_limit() {
        let c = Condition::High {
            limit: 10.0,
            hysteresis: 0.0,
        };
        assert_eq!(c.eval(Value::Float(10.0), true), Some(true));
        assert_eq!(c.eval(Value::Float(9.99), true), Some(false));
    }
}
