//! "Read now": a technician asks a device to be read at once and sees the
//! raw registers next to the decoded values.
//!
//! A probe is a request on the endpoint task's probe queue, served between
//! two polls like a write (see [`endpoint`](super::endpoint)): it runs the
//! device's read plan once over the endpoint's one link, so it never talks
//! to an RS-485 bus at the same time as the polling. The reply keeps every
//! request's raw words or bits and each point's decoded value with its
//! quality. A probe does not change the device's health or schedule and
//! its values do not go to the alarm engine.
//!
//! [`Probers`] maps device ids to their endpoint's queue; the web page
//! holds it through [`FieldHandles`](crate::app::FieldHandles).

use super::plan::{ReadPlan, ReadRequest};
use super::transport::ModbusError;
use crate::drivers::RegisterKind;
use crate::point::{PointIndex, Quality, Value};
use serde::Serialize;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// Probes waiting per endpoint task; more are refused at once (busy).
pub const PROBE_QUEUE: usize = 4;

/// Why a probe has no readings.
#[derive(Debug, Clone, PartialEq, Serialize, thiserror::Error)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ProbeError {
    /// No Modbus task serves the device (unknown, disabled, no points).
    #[error("device {device} is not polled over Modbus")]
    NotPolled { device: String },
    /// The link to the device is down (connect failed, waiting to reconnect).
    #[error("device offline: {message}")]
    Offline { message: String },
    /// A request got no reply within the device's timeout.
    #[error("no reply within {timeout_ms} ms")]
    Timeout { timeout_ms: u64 },
    /// The device answered a request with a Modbus exception.
    #[error("device exception {code} ({name}) to {function}")]
    Exception {
        function: String,
        code: u8,
        name: String,
    },
    /// The reply did not match the request.
    #[error("bad reply: {message}")]
    Protocol { message: String },
    /// Other probes are waiting for the same link.
    #[error("the device's link is busy with other probes; try again")]
    Busy,
    /// No answer from the driver within the caller's time limit.
    #[error("no answer from the driver within {timeout_ms} ms")]
    Deadline { timeout_ms: u64 },
    /// The driver stopped (shutdown or reload).
    #[error("the driver stopped")]
    Stopped,
}

impl From<ModbusError> for ProbeError {
    fn from(e: ModbusError) -> ProbeError {
        match e {
            ModbusError::Timeout(d) => ProbeError::Timeout {
                timeout_ms: d.as_millis() as u64,
            },
            ModbusError::Connect { .. } | ModbusError::NotConnected(_) | ModbusError::Io(_) => {
                ProbeError::Offline {
                    message: e.to_string(),
                }
            }
            ModbusError::Exception {
                function,
                code,
                name,
            } => ProbeError::Exception {
                function: function.into(),
                code,
                name: name.into(),
            },
            ModbusError::Protocol(message) => ProbeError::Protocol { message },
        }
    }
}

/// The raw reply of one read request.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RawRead {
    /// `coil`, `discrete_input`, `holding` or `input`.
    pub table: RegisterKind,
    pub start: u16,
    pub count: u16,
    /// Registers as received (holding, input).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub words: Option<Vec<u16>>,
    /// Bits as received (coils, discrete inputs).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bits: Option<Vec<bool>>,
}

/// One point as the probe decoded it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ProbeValue {
    pub point: PointIndex,
    pub table: RegisterKind,
    pub address: u16,
    /// The point's raw registers (or its one bit as 0/1).
    pub raw: Vec<u16>,
    pub value: Option<Value>,
    /// `good`, or `bad` when the raw data could not be decoded.
    pub quality: Quality,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// What one probe read.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ProbeReport {
    pub unit: u8,
    /// From the start of the first request to the last reply.
    pub took_ms: f64,
    pub reads: Vec<RawRead>,
    pub values: Vec<ProbeValue>,
}

/// One probe on an endpoint's queue.
#[derive(Debug)]
pub struct ProbeRequest {
    pub device: Arc<str>,
    pub reply: oneshot::Sender<Result<ProbeReport, ProbeError>>,
}

/// A raw reply (as the endpoint received it).
pub(super) enum RawReply {
    Bits(Vec<bool>),
    Words(Vec<u16>),
}

/// Record request `r`'s reply and decode its points (pure).
pub(super) fn decode_raw(
    plan: &ReadPlan,
    r: &ReadRequest,
    reply: RawReply,
    reads: &mut Vec<RawRead>,
    values: &mut Vec<ProbeValue>,
) {
    for s in plan.slots_of(r) {
        let at = s.offset as usize;
        let address = r.start.saturating_add(s.offset);
        let (raw, decoded) = match &reply {
            RawReply::Bits(bits) => match bits.get(at) {
                Some(&b) => (vec![b as u16], Ok(s.codec.decode_bit(b))),
                None => (Vec::new(), Err("reply too short".to_string())),
            },
            RawReply::Words(words) => {
                let n = s.codec.kind.registers() as usize;
                let raw: Vec<u16> = words.iter().skip(at).take(n).copied().collect();
                let v = s
                    .codec
                    .decode_registers(words.get(at..).unwrap_or(&[]))
                    .map_err(|e| e.to_string());
                (raw, v)
            }
        };
        let (value, quality, error) = match decoded {
            Ok(v) => (Some(v), Quality::Good, None),
            Err(e) => (None, Quality::Bad, Some(e)),
        };
        values.push(ProbeValue {
            point: s.point,
            table: r.table,
            address,
            raw,
            value,
            quality,
            error,
        });
    }
    let (words, bits) = match reply {
        RawReply::Bits(b) => (None, Some(b)),
        RawReply::Words(w) => (Some(w), None),
    };
    reads.push(RawRead {
        table: r.table,
        start: r.start,
        count: r.count,
        words,
        bits,
    });
}

/// A probe queue in front of `to` whose reports number points through
/// `forward` (a driver kept across a configuration reload numbers its
/// points as in the table it started with; the page reads the current
/// one). A value `forward` does not know is dropped from the report.
pub fn shifted(
    to: mpsc::Sender<ProbeRequest>,
    forward: impl Fn(PointIndex) -> Option<PointIndex> + Send + 'static,
) -> mpsc::Sender<ProbeRequest> {
    let (tx, mut rx) = mpsc::channel::<ProbeRequest>(PROBE_QUEUE);
    tokio::spawn(async move {
        while let Some(req) = rx.recv().await {
            let (reply, answer) = oneshot::channel();
            let outer = req.reply;
            let inner = ProbeRequest {
                device: req.device,
                reply,
            };
            if let Err(e) = to.try_send(inner) {
                let _ = outer.send(Err(match e {
                    mpsc::error::TrySendError::Full(_) => ProbeError::Busy,
                    mpsc::error::TrySendError::Closed(_) => ProbeError::Stopped,
                }));
                continue;
            }
            // One probe at a time through the shim: the endpoint serves
            // its queue in order anyway.
            let r = match answer.await {
                Ok(Ok(mut report)) => {
                    report.values.retain_mut(|v| match forward(v.point) {
                        Some(p) => {
                            v.point = p;
                            true
                        }
                        None => false,
                    });
                    Ok(report)
                }
                Ok(Err(e)) => Err(e),
                Err(_) => Err(ProbeError::Stopped),
            };
            let _ = outer.send(r);
        }
    });
    tx
}

/// Device id → the probe queue of the endpoint task that polls it.
#[derive(Clone, Debug, Default)]
pub struct Probers {
    by_device: HashMap<Arc<str>, mpsc::Sender<ProbeRequest>>,
}

impl Probers {
    pub fn new() -> Probers {
        Probers::default()
    }

    /// Register an endpoint's queue for a device.
    pub fn insert(&mut self, device: Arc<str>, tx: mpsc::Sender<ProbeRequest>) {
        self.by_device.insert(device, tx);
    }

    /// Every device and its endpoint's queue.
    pub fn iter(&self) -> impl Iterator<Item = (&Arc<str>, &mpsc::Sender<ProbeRequest>)> {
        self.by_device.iter()
    }

    /// True when a Modbus task polls `device`.
    pub fn serves(&self, device: &str) -> bool {
        self.by_device.contains_key(device)
    }

    /// Read `device` once, now (after the request in progress on its link),
    /// and wait at most `timeout` for the report.
    pub async fn probe(&self, device: &str, timeout: Duration) -> Result<ProbeReport, ProbeError> {
        let tx = self
            .by_device
            .get(device)
            .ok_or_else(|| ProbeError::NotPolled {
                device: device.to_string(),
            })?;
        let (reply, rx) = oneshot::channel();
        let req = ProbeRequest {
            device: device.into(),
            reply,
        };
        tx.try_send(req).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => ProbeError::Busy,
            mpsc::error::TrySendError::Closed(_) => ProbeError::Stopped,
        })?;
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(ProbeError::Stopped),
            Err(_) => Err(ProbeError::Deadline {
                timeout_ms: timeout.as_millis() as u64,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::drivers::modbus::plan::{Limits, ReadPlan};
    use crate::drivers::PointConfig;

    fn point(id: &str, table: &str, address: u16, kind: &str, scale: f64) -> PointConfig {
        let text = format!(
            "id = \"{id}\"\nregister = \"{table}\"\naddress = {address}\ntype = \"{kind}\"\nscale = {scale}\n"
        );
        toml::from_str(&text).unwrap_or_else(|e| panic!("{e}"))
    }

    fn plan_of(points: &[PointConfig]) -> ReadPlan {
        let pts: Vec<(PointIndex, &PointConfig)> = points
            .iter()
            .enumerate()
            .map(|(i, p)| (i as PointIndex, p))
            .collect();
        crate::drivers::modbus::plan::plan(
            &pts,
            Limits {
                max_registers: 125,
                max_bits: 2000,
                max_gap_registers: 8,
                max_gap_bits: 64,
            },
        )
        .unwrap()
    }

    #[test]
    fn raw_words_and_scaled_values_side_by_side() {
        let pts = [
            point("t", "holding", 10, "i16", 0.1),
            point("e", "holding", 12, "u32", 1.0),
        ];
        let plan = plan_of(&pts);
        assert_eq!(plan.requests.len(), 1);
        let (mut reads, mut values) = (Vec::new(), Vec::new());
        decode_raw(
            &plan,
            &plan.requests[0],
            RawReply::Words(vec![0xFF38, 0, 0x0001, 0x0002]),
            &mut reads,
            &mut values,
        );
        assert_eq!(reads[0].words.as_deref(), Some(&[0xFF38, 0, 1, 2][..]));
        assert_eq!(reads[0].start, 10);
        let t = values.iter().find(|v| v.point == 0).unwrap();
        assert_eq!(t.raw, [0xFF38]);
        assert_eq!(t.value, Some(Value::Float(-20.0)));
        assert_eq!(t.quality, Quality::Good);
        let e = values.iter().find(|v| v.point == 1).unwrap();
        assert_eq!((e.address, e.raw.clone()), (12, vec![1, 2]));
        assert_eq!(e.value, Some(Value::Int(0x0001_0002)));
    }

    #[test]
    fn a_short_reply_marks_the_point_bad_not_the_probe() {
        let pts = [
            point("a", "holding", 0, "u16", 1.0),
            point("b", "holding", 1, "u32", 1.0),
        ];
        let plan = plan_of(&pts);
        let (mut reads, mut values) = (Vec::new(), Vec::new());
        decode_raw(
            &plan,
            &plan.requests[0],
            RawReply::Words(vec![7, 8]),
            &mut reads,
            &mut values,
        );
        assert_eq!(values[0].value, Some(Value::Int(7)));
        assert_eq!(values[1].quality, Quality::Bad);
        assert!(values[1].error.is_some());
    }

    #[test]
    fn bits_keep_their_raw_form() {
        let pts = [
            point("x", "coil", 3, "bool", 1.0),
            point("y", "coil", 5, "bool", 1.0),
        ];
        let plan = plan_of(&pts);
        let (mut reads, mut values) = (Vec::new(), Vec::new());
        decode_raw(
            &plan,
            &plan.requests[0],
            RawReply::Bits(vec![true, false, true]),
            &mut reads,
            &mut values,
        );
        assert_eq!(reads[0].bits.as_deref(), Some(&[true, false, true][..]));
        assert_eq!(values[0].raw, [1]);
        assert_eq!(values[1].value, Some(Value::Bool(true)));
        assert_eq!(values[1].address, 5);
    }

    #[test]
    fn modbus_errors_map_to_clear_probe_errors() {
        let e: ProbeError = ModbusError::Exception {
            function: "read holding registers",
            code: 2,
            name: "illegal data address",
        }
        .into();
        assert!(matches!(e, ProbeError::Exception { code: 2, .. }));
        let e: ProbeError = ModbusError::Timeout(Duration::from_millis(500)).into();
        assert_eq!(e, ProbeError::Timeout { timeout_ms: 500 });
        let e: ProbeError = ModbusError::NotConnected("refused".into()).into();
        assert!(e.to_string().contains("offline"), "{e}");
    }

    #[tokio::test]
    async fn a_kept_drivers_probe_reports_the_current_point_numbers() {
        // The driver numbers the device's points 5..=6; the table now has
        // them at 0..=1 (a device earlier in the file was removed).
        let (to, mut endpoint) = mpsc::channel::<ProbeRequest>(PROBE_QUEUE);
        tokio::spawn(async move {
            while let Some(req) = endpoint.recv().await {
                let value = |point| ProbeValue {
                    point,
                    table: RegisterKind::Holding,
                    address: 0,
                    raw: vec![1],
                    value: Some(Value::Float(1.0)),
                    quality: Quality::Good,
                    error: None,
                };
                let _ = req.reply.send(Ok(ProbeReport {
                    unit: 1,
                    took_ms: 1.0,
                    reads: Vec::new(),
                    values: vec![value(5), value(6), value(9)],
                }));
            }
        });
        let shift = |i: PointIndex| (5..=6).contains(&i).then(|| i - 5);
        let mut probers = Probers::new();
        probers.insert("hvac-1".into(), shifted(to, shift));
        let report = probers
            .probe("hvac-1", Duration::from_secs(5))
            .await
            .expect("report");
        let points: Vec<PointIndex> = report.values.iter().map(|v| v.point).collect();
        assert_eq!(points, vec![0, 1], "shifted, and the unknown one dropped");

        // The endpoint gone: the probe says so instead of hanging.
        let (gone, rx) = mpsc::channel::<ProbeRequest>(1);
        drop(rx);
        let mut probers = Probers::new();
        probers.insert("hvac-2".into(), shifted(gone, shift));
        let e = probers
            .probe("hvac-2", Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(matches!(e, ProbeError::Stopped), "{e:?}");
    }

    #[tokio::test]
    async fn unknown_devices_and_full_queues_answer_at_once() {
        let mut p = Probers::new();
        assert!(matches!(
            p.probe("nope", Duration::from_secs(1)).await,
            Err(ProbeError::NotPolled { .. })
        ));
        let (tx, _rx) = mpsc::channel(1);
        p.insert("d".into(), tx.clone());
        let (reply, _keep) = oneshot::channel();
        tx.try_send(ProbeRequest {
            device: "d".into(),
            reply,
        })
        .unwrap();
        assert_eq!(
            p.probe("d", Duration::from_secs(1)).await,
            Err(ProbeError::Busy)
        );
    }
}
