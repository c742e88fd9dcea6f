//! Register decoding: raw Modbus words and bits → engineering values.
//!
//! Pure functions, no I/O. A [`Codec`] is built once per point at start-up
//! and then decodes every reply without allocating.
//!
//! Byte and word order compose into the four usual layouts of a 32-bit value
//! `0xAABBCCDD`: big/big `AABB CCDD`, word order little `CCDD AABB`, byte
//! order little `BBAA DDCC`, both little `DDCC BBAA`.

use crate::drivers::{Order, PointConfig, PointType};
use crate::point::Value;

/// Why a value could not be decoded or encoded.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum DecodeError {
    /// The reply holds fewer registers than the point occupies.
    #[error("reply too short: point needs {need} registers, got {got}")]
    ShortReply { need: usize, got: usize },
    /// An engineering value does not fit the point's raw type.
    #[error("value {value} does not fit type {kind:?}")]
    OutOfRange { value: f64, kind: PointType },
    /// The value's kind does not suit the point (a number for a bit, …).
    #[error("a {value:?} cannot be written to a {kind:?} point")]
    Mismatch { value: Value, kind: PointType },
}

/// How one point's raw data turns into a [`Value`] (and back).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Codec {
    pub kind: PointType,
    /// Bit number for `bool` points on a register (0 = least significant).
    pub bit: u8,
    pub byte_order: Order,
    pub word_order: Order,
    pub scale: f64,
    pub offset: f64,
    /// Decimal places of raw × scale + offset for integer raws (0.1 → 1),
    /// so `123 × 0.1` reads 12.3, not 12.300000000000001.
    pub decimals: u32,
}

/// Decimal places needed to write `x` exactly (at most 9).
fn decimals_of(x: f64) -> u32 {
    (0..=9)
        .find(|&d| {
            let s = x * 10f64.powi(d as i32);
            (s - s.round()).abs() <= 1e-9 * s.abs().max(1.0)
        })
        .unwrap_or(9)
}

fn round_to(v: f64, decimals: u32) -> f64 {
    let m = 10f64.powi(decimals as i32);
    let r = (v * m).round() / m;
    if r.is_finite() {
        r
    } else {
        v
    }
}

impl Codec {
    /// The codec of a configured point.
    pub fn new(p: &PointConfig) -> Codec {
        Codec {
            kind: p.kind,
            bit: p.bit.unwrap_or(0).min(15),
            byte_order: p.byte_order.unwrap_or_default(),
            word_order: p.word_order.unwrap_or_default(),
            scale: p.scale,
            offset: p.offset,
            decimals: decimals_of(p.scale).max(decimals_of(p.offset)),
        }
    }

    /// True when integer types keep their raw value (`Value::Int`).
    fn identity(&self) -> bool {
        self.scale == 1.0 && self.offset == 0.0
    }

    fn engineering_int(&self, raw: i64) -> Value {
        if self.identity() {
            Value::Int(raw)
        } else {
            Value::Float(round_to(
                raw as f64 * self.scale + self.offset,
                self.decimals,
            ))
        }
    }

    /// Decode a coil or discrete input.
    pub fn decode_bit(&self, bit: bool) -> Value {
        Value::Bool(bit)
    }

    /// Decode a value starting at `regs[0]`; `regs` may be longer than the
    /// point (the rest is ignored).
    pub fn decode_registers(&self, regs: &[u16]) -> Result<Value, DecodeError> {
        let need = self.kind.registers() as usize;
        if regs.len() < need {
            return Err(DecodeError::ShortReply {
                need,
                got: regs.len(),
            });
        }
        Ok(match self.kind {
            PointType::Bool => {
                Value::Bool((raw_u16(regs[0], self.byte_order) >> self.bit) & 1 == 1)
            }
            PointType::U16 => self.engineering_int(raw_u16(regs[0], self.byte_order) as i64),
            PointType::I16 => self.engineering_int(raw_u16(regs[0], self.byte_order) as i16 as i64),
            PointType::U32 => self.engineering_int(self.raw32(regs) as i64),
            PointType::I32 => self.engineering_int(self.raw32(regs) as i32 as i64),
            PointType::F32 => {
                // An f32 carries ~7 significant digits: widen it through its
                // shortest decimal form so 21.1 stays 21.1.
                let f32v = f32::from_bits(self.raw32(regs));
                let f = if f32v.is_finite() {
                    f32v.to_string().parse::<f64>().unwrap_or(f32v as f64)
                } else {
                    f32v as f64
                };
                Value::Float(f * self.scale + self.offset)
            }
        })
    }

    fn raw32(&self, regs: &[u16]) -> u32 {
        raw_u32([regs[0], regs[1]], self.byte_order, self.word_order)
    }

    /// Encode an engineering value into the point's registers (for writes):
    /// raw = (value − offset) / scale, rounded for integer types. Returns the
    /// registers and how many of them are used (1 or 2). `bool` points on a
    /// register need a read-modify-write and are refused here.
    pub fn encode_registers(&self, value: Value) -> Result<([u16; 2], usize), DecodeError> {
        let mismatch = || DecodeError::Mismatch {
            value,
            kind: self.kind,
        };
        let v = match value {
            Value::Bool(_) => return Err(mismatch()),
            Value::Int(i) => i as f64,
            Value::Float(f) => f,
        };
        let raw = (v - self.offset) / self.scale;
        let out_of_range = || DecodeError::OutOfRange {
            value: v,
            kind: self.kind,
        };
        let int_in = |lo: f64, hi: f64| -> Result<i64, DecodeError> {
            let r = raw.round();
            if r.is_finite() && (lo..=hi).contains(&r) {
                Ok(r as i64)
            } else {
                Err(out_of_range())
            }
        };
        Ok(match self.kind {
            PointType::Bool => return Err(mismatch()),
            PointType::U16 => (
                [encode_u16(int_in(0.0, 65535.0)? as u16, self.byte_order), 0],
                1,
            ),
            PointType::I16 => (
                [
                    encode_u16(int_in(-32768.0, 32767.0)? as i16 as u16, self.byte_order),
                    0,
                ],
                1,
            ),
            PointType::U32 => (
                encode_u32(
                    int_in(0.0, u32::MAX as f64)? as u32,
                    self.byte_order,
                    self.word_order,
                ),
                2,
            ),
            PointType::I32 => (
                encode_u32(
                    int_in(i32::MIN as f64, i32::MAX as f64)? as i32 as u32,
                    self.byte_order,
                    self.word_order,
                ),
                2,
            ),
            PointType::F32 => {
                if !raw.is_finite() || raw.abs() > f32::MAX as f64 {
                    return Err(out_of_range());
                }
                (
                    encode_u32((raw as f32).to_bits(), self.byte_order, self.word_order),
                    2,
                )
            }
        })
    }
}

/// The 16-bit raw value of one register as sent on the wire.
#[inline]
pub fn raw_u16(reg: u16, byte_order: Order) -> u16 {
    match byte_order {
        Order::Big => reg,
        Order::Little => reg.swap_bytes(),
    }
}

/// The 32-bit raw value of two consecutive registers.
#[inline]
pub fn raw_u32(regs: [u16; 2], byte_order: Order, word_order: Order) -> u32 {
    let a = raw_u16(regs[0], byte_order) as u32;
    let b = raw_u16(regs[1], byte_order) as u32;
    match word_order {
        Order::Big => (a << 16) | b,
        Order::Little => (b << 16) | a,
    }
}

/// Inverse of [`raw_u16`].
#[inline]
pub fn encode_u16(raw: u16, byte_order: Order) -> u16 {
    raw_u16(raw, byte_order)
}

/// Inverse of [`raw_u32`].
#[inline]
pub fn encode_u32(raw: u32, byte_order: Order, word_order: Order) -> [u16; 2] {
    let hi = encode_u16((raw >> 16) as u16, byte_order);
    let lo = encode_u16(raw as u16, byte_order);
    match word_order {
        Order::Big => [hi, lo],
        Order::Little => [lo, hi],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn codec(kind: PointType, bo: Order, wo: Order) -> Codec {
        Codec {
            kind,
            bit: 0,
            byte_order: bo,
            word_order: wo,
            scale: 1.0,
            offset: 0.0,
            decimals: 0,
        }
    }

    #[test]
    fn four_layouts_of_a_32_bit_value() {
        use Order::*;
        let v = 0xAABB_CCDDu32;
        assert_eq!(encode_u32(v, Big, Big), [0xAABB, 0xCCDD]);
        assert_eq!(encode_u32(v, Big, Little), [0xCCDD, 0xAABB]);
        assert_eq!(encode_u32(v, Little, Big), [0xBBAA, 0xDDCC]);
        assert_eq!(encode_u32(v, Little, Little), [0xDDCC, 0xBBAA]);
    }

    #[test]
    fn integers_stay_integers_without_scaling() {
        let c = codec(PointType::I16, Order::Big, Order::Big);
        assert_eq!(c.decode_registers(&[0xFFFE]).unwrap(), Value::Int(-2));
        let c = codec(PointType::U16, Order::Big, Order::Big);
        assert_eq!(c.decode_registers(&[0xFFFE]).unwrap(), Value::Int(65534));
        let c = codec(PointType::I32, Order::Big, Order::Little);
        assert_eq!(
            c.decode_registers(&[0xFFFF, 0xFFFF]).unwrap(),
            Value::Int(-1)
        );
        let c = codec(PointType::U32, Order::Big, Order::Big);
        assert_eq!(
            c.decode_registers(&[0x0001, 0x0002]).unwrap(),
            Value::Int(0x0001_0002)
        );
    }

    #[test]
    fn scale_and_offset_make_floats() {
        let mut c = codec(PointType::I16, Order::Big, Order::Big);
        c.scale = 0.1;
        c.offset = -5.0;
        match c.decode_registers(&[250]).unwrap() {
            Value::Float(f) => assert!((f - 20.0).abs() < 1e-9, "{f}"),
            v => panic!("{v:?}"),
        }
        let c = codec(PointType::F32, Order::Big, Order::Big);
        let regs = encode_u32(21.5f32.to_bits(), Order::Big, Order::Big);
        assert_eq!(c.decode_registers(&regs).unwrap(), Value::Float(21.5));
        let regs = encode_u32(21.1f32.to_bits(), Order::Big, Order::Big);
        assert_eq!(c.decode_registers(&regs).unwrap(), Value::Float(21.1));
    }

    #[test]
    fn scaled_integers_have_no_binary_noise() {
        let mut c = codec(PointType::U16, Order::Big, Order::Big);
        c.scale = 0.1;
        c.decimals = decimals_of(0.1);
        assert_eq!(c.decode_registers(&[197]).unwrap(), Value::Float(19.7));
        assert_eq!(c.decode_registers(&[123]).unwrap(), Value::Float(12.3));
        assert_eq!(decimals_of(0.25), 2);
        assert_eq!(decimals_of(2.0), 0);
        assert_eq!(decimals_of(-273.15), 2);
    }

    #[test]
    fn bit_in_register() {
        let mut c = codec(PointType::Bool, Order::Big, Order::Big);
        c.bit = 9;
        assert_eq!(c.decode_registers(&[1 << 9]).unwrap(), Value::Bool(true));
        assert_eq!(
            c.decode_registers(&[!(1 << 9)]).unwrap(),
            Value::Bool(false)
        );
        c.byte_order = Order::Little;
        assert_eq!(c.decode_registers(&[1 << 1]).unwrap(), Value::Bool(true));
        assert_eq!(c.decode_bit(true), Value::Bool(true));
    }

    #[test]
    fn short_reply_is_an_error_not_a_panic() {
        let c = codec(PointType::F32, Order::Big, Order::Big);
        assert_eq!(
            c.decode_registers(&[1]),
            Err(DecodeError::ShortReply { need: 2, got: 1 })
        );
        assert!(c.decode_registers(&[]).is_err());
    }

    #[test]
    fn encode_refuses_what_does_not_fit() {
        let c = codec(PointType::U16, Order::Big, Order::Big);
        assert!(c.encode_registers(Value::Int(-1)).is_err());
        assert!(c.encode_registers(Value::Int(65536)).is_err());
        assert!(c.encode_registers(Value::Bool(true)).is_err());
        assert!(c.encode_registers(Value::Float(f64::NAN)).is_err());
        let c = codec(PointType::F32, Order::Big, Order::Big);
        assert!(c.encode_registers(Value::Float(1e300)).is_err());
    }

    fn order() -> impl Strategy<Value = Order> {
        prop_oneof![Just(Order::Big), Just(Order::Little)]
    }

    proptest! {
        #[test]
        fn raw_round_trip_all_orders(v: u32, w: u16, bo in order(), wo in order()) {
            prop_assert_eq!(raw_u32(encode_u32(v, bo, wo), bo, wo), v);
            prop_assert_eq!(raw_u16(encode_u16(w, bo), bo), w);
        }

        #[test]
        fn integer_values_round_trip(v: i32, u: u32, s: i16, us: u16, bo in order(), wo in order()) {
            let cases = [
                (PointType::I32, v as i64),
                (PointType::U32, u as i64),
                (PointType::I16, s as i64),
                (PointType::U16, us as i64),
            ];
            for (kind, raw) in cases {
                let c = codec(kind, bo, wo);
                let (regs, n) = c.encode_registers(Value::Int(raw)).unwrap();
                prop_assert_eq!(n, kind.registers() as usize);
                prop_assert_eq!(c.decode_registers(&regs[..n]).unwrap(), Value::Int(raw));
            }
        }

        #[test]
        fn f32_round_trips_bit_exact(bits: u32, bo in order(), wo in order()) {
            let f = f32::from_bits(bits);
            prop_assume!(f.is_finite());
            let c = codec(PointType::F32, bo, wo);
            let (regs, n) = c.encode_registers(Value::Float(f as f64)).unwrap();
            prop_assert_eq!(n, 2);
            prop_assert_eq!(raw_u32(regs, bo, wo), bits);
            // The decoded f64 is the f32's shortest decimal form: narrowing
            // it gives the same f32 back.
            match c.decode_registers(&regs).unwrap() {
                Value::Float(d) => prop_assert_eq!((d as f32).to_bits(), bits),
                v => prop_assert!(false, "{:?}", v),
            }
        }

        #[test]
        fn scaled_values_round_trip(raw: i16, scale in prop_oneof![Just(0.1), Just(0.5), Just(2.0), Just(-1.0)], offset in -1000i32..1000, bo in order()) {
            let c = Codec { scale, offset: offset as f64, decimals: decimals_of(scale), ..codec(PointType::I16, bo, Order::Big) };
            let regs = [encode_u16(raw as u16, bo)];
            let v = c.decode_registers(&regs).unwrap();
            prop_assert!(matches!(v, Value::Float(_)));
            let (back, _) = c.encode_registers(v).unwrap();
            prop_assert_eq!(back[0], regs[0]);
        }

        #[test]
        fn decode_never_panics(regs in proptest::collection::vec(any::<u16>(), 0..3), bit in 0u8..16, bo in order(), wo in order(),
                               kind in prop_oneof![Just(PointType::Bool), Just(PointType::U16), Just(PointType::I16), Just(PointType::U32), Just(PointType::I32), Just(PointType::F32)]) {
            let c = Codec { bit, ..codec(kind, bo, wo) };
            let r = c.decode_registers(&regs);
            prop_assert_eq!(r.is_ok(), regs.len() >= kind.registers() as usize);
        }
    }
}
