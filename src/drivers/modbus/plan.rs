//! The read plan: a device's points coalesced into the fewest read requests.
//!
//! Pure logic, built once per device at start-up. Per table (coils, discrete
//! inputs, holding, input registers) points are sorted by address and packed
//! greedily: a request grows to take the next point while the unused gap
//! before it is at most `max_gap` and the request stays within the protocol
//! limit (`max_registers_per_read` ≤ 125, `max_bits_per_read` ≤ 2000). A
//! multi-register value is never split across two requests.

use super::decode::Codec;
use crate::drivers::{PointConfig, RegisterKind};
use crate::point::PointIndex;
use std::ops::Range;

/// Why a device's points cannot be planned.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// A point has no `register` or `address` (config validation rejects this).
    #[error("point {point} has no Modbus register or address")]
    Unaddressed { point: PointIndex },
    /// A point is wider than the request limit.
    #[error("point {point} needs {width} registers but a request may read only {limit}")]
    TooWide {
        point: PointIndex,
        width: u16,
        limit: u16,
    },
    /// A point runs past the end of the address space.
    #[error("point {point} runs past address 65535")]
    PastEnd { point: PointIndex },
}

/// Coalescing limits of one device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub max_registers: u16,
    pub max_bits: u16,
    pub max_gap_registers: u16,
    pub max_gap_bits: u16,
}

impl Limits {
    /// Limits from a device's Modbus settings, clamped to the protocol's.
    pub fn from_config(m: &super::ModbusDeviceConfig) -> Limits {
        Limits {
            max_registers: m.max_registers_per_read.clamp(1, 125),
            max_bits: m.max_bits_per_read.clamp(1, 2000),
            max_gap_registers: m.max_gap_registers,
            max_gap_bits: m.max_gap_bits,
        }
    }

    fn for_table(&self, t: RegisterKind) -> (u16, u16) {
        if t.is_bit() {
            (self.max_bits, self.max_gap_bits)
        } else {
            (self.max_registers, self.max_gap_registers)
        }
    }
}

/// One point inside a request's reply.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Slot {
    pub point: PointIndex,
    /// Position of the point's first register (or bit) in the reply.
    pub offset: u16,
    pub codec: Codec,
}

/// One read request.
#[derive(Clone, Debug, PartialEq)]
pub struct ReadRequest {
    pub table: RegisterKind,
    pub start: u16,
    pub count: u16,
    /// The request's points: a range of [`ReadPlan::slots`].
    pub slots: Range<usize>,
}

/// Every request of one device, with the points each reply carries.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ReadPlan {
    pub requests: Vec<ReadRequest>,
    pub slots: Vec<Slot>,
}

impl ReadPlan {
    /// The slots of request `r`.
    pub fn slots_of(&self, r: &ReadRequest) -> &[Slot] {
        &self.slots[r.slots.clone()]
    }

    /// This plan with request `k` split where it reads addresses no point
    /// uses, each run of adjacent points a request of its own; `None` when
    /// request `k` has no such gap. For a device that refuses a read over
    /// addresses it does not have (exception 2, illegal data address).
    pub fn split_at_gaps(&self, k: usize) -> Option<ReadPlan> {
        let r = self.requests.get(k)?;
        let width = |s: &Slot| {
            if r.table.is_bit() {
                1
            } else {
                u32::from(s.codec.kind.registers())
            }
        };
        // Runs of slots (sorted by offset) without an unused address
        // between them: (first slot, start offset, end offset).
        let mut runs: Vec<(usize, u32, u32)> = Vec::new();
        for (i, s) in self.slots_of(r).iter().enumerate() {
            let (from, to) = (u32::from(s.offset), u32::from(s.offset) + width(s));
            match runs.last_mut() {
                Some(run) if from <= run.2 => run.2 = run.2.max(to),
                _ => runs.push((r.slots.start + i, from, to)),
            }
        }
        if runs.len() < 2 {
            return None;
        }
        let mut out = ReadPlan {
            requests: Vec::with_capacity(self.requests.len() + runs.len() - 1),
            slots: self.slots.clone(),
        };
        out.requests.extend_from_slice(&self.requests[..k]);
        for (n, &(first, from, to)) in runs.iter().enumerate() {
            let last = runs.get(n + 1).map_or(r.slots.end, |next| next.0);
            for s in &mut out.slots[first..last] {
                s.offset -= from as u16;
            }
            out.requests.push(ReadRequest {
                table: r.table,
                start: r.start + from as u16,
                count: (to - from) as u16,
                slots: first..last,
            });
        }
        out.requests.extend_from_slice(&self.requests[k + 1..]);
        Some(out)
    }
}

/// Width of a point in its table: 1 bit, or its type's register count.
fn width(table: RegisterKind, p: &PointConfig) -> u16 {
    if table.is_bit() {
        1
    } else {
        p.kind.registers()
    }
}

/// Plan the reads of one device's points.
pub fn plan(points: &[(PointIndex, &PointConfig)], limits: Limits) -> Result<ReadPlan, PlanError> {
    struct Item {
        table: RegisterKind,
        start: u32,
        end: u32,
        point: PointIndex,
        codec: Codec,
    }
    let mut items = Vec::with_capacity(points.len());
    for &(point, p) in points {
        let (Some(table), Some(address)) = (p.register, p.address) else {
            return Err(PlanError::Unaddressed { point });
        };
        let w = width(table, p);
        let (max, _) = limits.for_table(table);
        if w > max {
            return Err(PlanError::TooWide {
                point,
                width: w,
                limit: max,
            });
        }
        let end = address as u32 + w as u32;
        if end > 65536 {
            return Err(PlanError::PastEnd { point });
        }
        items.push(Item {
            table,
            start: address as u32,
            end,
            point,
            codec: Codec::new(p),
        });
    }
    items.sort_by_key(|i| (i.table, i.start, i.end, i.point));

    let mut out = ReadPlan {
        requests: Vec::new(),
        slots: Vec::with_capacity(items.len()),
    };
    let mut i = 0;
    while i < items.len() {
        let table = items[i].table;
        let (max, gap) = limits.for_table(table);
        let start = items[i].start;
        let mut end = items[i].end;
        let mut j = i + 1;
        while j < items.len() && items[j].table == table {
            let it = &items[j];
            let unused = it.start.saturating_sub(end);
            let new_end = end.max(it.end);
            if unused > gap as u32 || new_end - start > max as u32 {
                break;
            }
            end = new_end;
            j += 1;
        }
        let first_slot = out.slots.len();
        for it in &items[i..j] {
            out.slots.push(Slot {
                point: it.point,
                offset: (it.start - start) as u16,
                codec: it.codec,
            });
        }
        out.requests.push(ReadRequest {
            table,
            start: start as u16,
            count: (end - start) as u16,
            slots: first_slot..out.slots.len(),
        });
        i = j;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::drivers::PointType;
    use proptest::prelude::*;

    fn pt(table: RegisterKind, address: u16, kind: PointType) -> PointConfig {
        PointConfig::modbus(table, address, kind)
    }

    const LIMITS: Limits = Limits {
        max_registers: 125,
        max_bits: 2000,
        max_gap_registers: 10,
        max_gap_bits: 64,
    };

    fn run(points: &[PointConfig], limits: Limits) -> ReadPlan {
        let v: Vec<_> = points
            .iter()
            .enumerate()
            .map(|(i, p)| (i as PointIndex, p))
            .collect();
        plan(&v, limits).unwrap()
    }

    #[test]
    fn benchmark_device_is_two_requests() {
        use RegisterKind::*;
        let mut pts: Vec<_> = (0..100).map(|a| pt(Holding, a, PointType::U16)).collect();
        pts.push(pt(Coil, 0, PointType::Bool));
        let p = run(&pts, LIMITS);
        assert_eq!(p.requests.len(), 2);
        assert_eq!((p.requests[0].table, p.requests[0].count), (Coil, 1));
        assert_eq!(
            (
                p.requests[1].table,
                p.requests[1].start,
                p.requests[1].count
            ),
            (Holding, 0, 100)
        );
    }

    #[test]
    fn a_request_splits_at_its_gaps_only() {
        use RegisterKind::*;
        let pts = [
            pt(Holding, 0, PointType::U16),
            pt(Holding, 1, PointType::F32), // 1..3, adjacent
            pt(Holding, 8, PointType::U16), // gap 3..8
            pt(Holding, 9, PointType::U16),
            pt(Coil, 0, PointType::Bool),
            pt(Coil, 1, PointType::Bool),
        ];
        let refs: Vec<(PointIndex, &PointConfig)> = pts
            .iter()
            .enumerate()
            .map(|(i, p)| (i as PointIndex, p))
            .collect();
        let p = plan(&refs, LIMITS).unwrap();
        let h = p.requests.iter().position(|r| r.table == Holding).unwrap();
        assert_eq!((p.requests[h].start, p.requests[h].count), (0, 10));
        let split = p.split_at_gaps(h).expect("a gap to split at");
        assert_eq!(split.requests.len(), p.requests.len() + 1);
        let reads: Vec<(RegisterKind, u16, u16)> = split
            .requests
            .iter()
            .map(|r| (r.table, r.start, r.count))
            .collect();
        assert!(reads.contains(&(Holding, 0, 3)), "{reads:?}");
        assert!(reads.contains(&(Holding, 8, 2)), "{reads:?}");
        // Every point is still read, at its own address.
        for r in &split.requests {
            for s in split.slots_of(r) {
                let cfg = &pts[s.point as usize];
                assert_eq!(cfg.register, Some(r.table));
                assert_eq!(cfg.address, Some(r.start + s.offset), "{s:?}");
            }
        }
        // The coils (no gap) and the parts (none left) do not split.
        let c = split.requests.iter().position(|r| r.table == Coil).unwrap();
        assert!(split.split_at_gaps(c).is_none());
        for k in 0..split.requests.len() {
            assert!(split.split_at_gaps(k).is_none(), "request {k}");
        }
    }

    #[test]
    fn gap_splits_requests() {
        use RegisterKind::*;
        let pts = [
            pt(Holding, 0, PointType::U16),
            pt(Holding, 11, PointType::U16), // gap 10: joins
            pt(Holding, 23, PointType::U16), // gap 11: new request
        ];
        let p = run(&pts, LIMITS);
        assert_eq!(p.requests.len(), 2);
        assert_eq!((p.requests[0].start, p.requests[0].count), (0, 12));
        assert_eq!((p.requests[1].start, p.requests[1].count), (23, 1));
        assert_eq!(p.slots_of(&p.requests[0])[1].offset, 11);
    }

    #[test]
    fn multi_register_value_not_split() {
        use RegisterKind::*;
        let limits = Limits {
            max_registers: 3,
            ..LIMITS
        };
        let pts = [
            pt(Input, 0, PointType::U16),
            pt(Input, 1, PointType::U16),
            pt(Input, 2, PointType::F32),
        ];
        let p = run(&pts, limits);
        assert_eq!(p.requests.len(), 2);
        assert_eq!((p.requests[1].start, p.requests[1].count), (2, 2));
    }

    #[test]
    fn too_wide_point_is_an_error() {
        let p = pt(RegisterKind::Holding, 0, PointType::U32);
        let limits = Limits {
            max_registers: 1,
            ..LIMITS
        };
        assert!(matches!(
            plan(&[(0, &p)], limits),
            Err(PlanError::TooWide { .. })
        ));
        let p = pt(RegisterKind::Holding, 65535, PointType::U32);
        assert!(matches!(
            plan(&[(0, &p)], LIMITS),
            Err(PlanError::PastEnd { .. })
        ));
    }

    fn arb_point() -> impl Strategy<Value = PointConfig> {
        (
            prop_oneof![
                Just(RegisterKind::Coil),
                Just(RegisterKind::DiscreteInput),
                Just(RegisterKind::Holding),
                Just(RegisterKind::Input)
            ],
            0u16..3000,
            prop_oneof![
                Just(PointType::U16),
                Just(PointType::U32),
                Just(PointType::F32)
            ],
        )
            .prop_map(|(t, a, k)| {
                let k = if t.is_bit() { PointType::Bool } else { k };
                pt(t, a, k)
            })
    }

    proptest! {
        #[test]
        fn every_point_covered_once_within_limits(
            pts in proptest::collection::vec(arb_point(), 0..150),
            max_registers in 2u16..=125,
            max_bits in 1u16..=2000,
            max_gap_registers in 0u16..40,
            max_gap_bits in 0u16..200,
        ) {
            let limits = Limits { max_registers, max_bits, max_gap_registers, max_gap_bits };
            let p = run(&pts, limits);
            let mut seen = vec![0u32; pts.len()];
            for r in &p.requests {
                let max = if r.table.is_bit() { max_bits } else { max_registers };
                prop_assert!(r.count >= 1 && r.count <= max, "{r:?}");
                prop_assert!(r.start as u32 + r.count as u32 <= 65536);
                for s in p.slots_of(r) {
                    let cfg = &pts[s.point as usize];
                    seen[s.point as usize] += 1;
                    prop_assert_eq!(cfg.register, Some(r.table));
                    let a = cfg.address.unwrap() as u32;
                    prop_assert_eq!(a, r.start as u32 + s.offset as u32);
                    prop_assert!(a + width(r.table, cfg) as u32 <= r.start as u32 + r.count as u32);
                }
            }
            prop_assert!(seen.iter().all(|&n| n == 1), "{seen:?}");
        }

        #[test]
        fn contiguous_points_need_the_minimum(n in 1u16..600, max_registers in 1u16..=125) {
            let pts: Vec<_> = (0..n).map(|a| pt(RegisterKind::Holding, a, PointType::U16)).collect();
            let p = run(&pts, Limits { max_registers, ..LIMITS });
            prop_assert_eq!(p.requests.len(), n.div_ceil(max_registers) as usize);
        }
    }
}
