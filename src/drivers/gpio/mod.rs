//! The Raspberry Pi's own pins: dry-contact inputs (enclosure tamper switch,
//! alarm contacts) become points on the bus, like Modbus readings, so alarm
//! rules apply to them; outputs (siren, strobe, door-release relay) are
//! written through [`crate::drivers::write::Writers`] by commands and
//! linkage, and are driven to their safe (inactive) level at start and at
//! shutdown.
//!
//! A GPIO device is a `[[devices]]` entry with a `[devices.gpio]` section.
//! Its points name pins like Modbus bits: `register = "discrete_input"` for
//! an input pin, `"coil"` for an output pin, `address` = the BCM GPIO number.
//!
//! - [`debounce`]: a level is accepted once it held for `debounce_s` (pure).
//! - [`hw`]: the pin trait; `rppal` behind the cargo feature `gpio`.
//!
//! Inputs are sampled every `sample_s` (memory-mapped reads, cheap) rather
//! than taken from edge interrupts: sampling cannot miss a level that held
//! for the debounce time, and needs no interrupt thread.

pub mod debounce;
pub mod hw;

use crate::config::{KeyPath, LoadedConfig};
use crate::drivers::write::{WriteError, WriteRequest, Writers};
use crate::drivers::{DeviceConfig, PointType, RegisterKind};
use crate::event::Timestamp;
use crate::point::{BusMessage, PointIndex, Reading, Value};
use crate::service::liveness::Heartbeat;
use crate::status::GatewayStatus;
use debounce::Debouncer;
use hw::{Opener, Pins};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn, Instrument as _};

/// Highest BCM GPIO number on the 40-pin header.
pub const MAX_PIN: u16 = 27;

/// GPIO problems.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum GpioError {
    #[error("estate-gateway was built without GPIO support (cargo feature `gpio`)")]
    NotBuilt,
    #[error("no Raspberry Pi GPIO on this machine ({0})")]
    NoHardware(String),
    #[error("GPIO {pin}: {message}")]
    Pin { pin: u8, message: String },
}

/// Pull resistor of input pins.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Pull {
    /// Pulled up: a dry contact switches the pin to ground.
    #[default]
    Up,
    /// Pulled down: the contact switches the pin to 3.3 V.
    Down,
    /// No pull (an external resistor is fitted).
    None,
}

/// A device made of the Pi's own pins (`[devices.gpio]`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GpioDeviceConfig {
    /// Pull resistor of the input pins: `up` (a contact to ground), `down`, `none`.
    #[serde(default)]
    pub pull: Pull,
    /// Input points read `true` while the pin is low (with `pull = "up"`:
    /// while the contact is closed). Default `true`.
    #[serde(default = "yes")]
    pub inputs_active_low: bool,
    /// Output points drive the pin low for `true` (relay boards with
    /// inverted inputs). Default `false`. Outputs are `false` (inactive)
    /// at start and after shutdown: siren off, door relay released.
    #[serde(default)]
    pub outputs_active_low: bool,
    /// An input's new level must hold this long, in seconds, before it is
    /// reported (contact bounce, interference on long wires).
    #[serde(
        rename = "debounce_s",
        with = "crate::config::duration",
        default = "default_debounce"
    )]
    pub debounce: Duration,
    /// Time between two samples of the inputs, in seconds.
    #[serde(
        rename = "sample_s",
        with = "crate::config::duration",
        default = "default_sample"
    )]
    pub sample: Duration,
}

fn yes() -> bool {
    true
}
fn default_debounce() -> Duration {
    Duration::from_millis(50)
}
fn default_sample() -> Duration {
    Duration::from_millis(10)
}

/// Problems with a GPIO device `d` at key path `k` (none when it has no
/// `[devices.gpio]`). Whether this machine can drive it is
/// [`missing_hardware`]'s question. (A second protocol section is
/// reported by the common device checks.)
pub fn validate(d: &DeviceConfig, k: &KeyPath) -> Vec<(KeyPath, String)> {
    let Some(g) = &d.gpio else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let gk = k.key("gpio");
    if !(Duration::from_millis(1)..=Duration::from_secs(1)).contains(&g.sample) {
        out.push((gk.key("sample_s"), "must be 0.001–1".into()));
    }
    if g.debounce > Duration::from_secs(60) {
        out.push((gk.key("debounce_s"), "must be at most 60".into()));
    }
    let mut pins = std::collections::BTreeMap::new();
    for (pi, p) in d.points.iter().enumerate() {
        let pk = k.key("points").index(pi);
        match p.register {
            Some(RegisterKind::DiscreteInput) => {
                if p.writable {
                    out.push((pk.key("writable"), "input pins are read-only".into()));
                }
            }
            Some(RegisterKind::Coil) => {}
            _ => {
                out.push((
                    pk.key("register"),
                    "a GPIO point needs `register` = \"discrete_input\" (input pin) or \"coil\" (output pin)".into(),
                ));
            }
        }
        if p.kind != PointType::Bool {
            out.push((pk.key("type"), "GPIO points are `bool`".into()));
        }
        if p.bit.is_some() {
            out.push((pk.key("bit"), "`bit` does not apply to GPIO pins".into()));
        }
        match p.address {
            None => out.push((
                pk.clone(),
                "a GPIO point needs `address` (the BCM GPIO number, 0–27)".into(),
            )),
            Some(a) if a > MAX_PIN => {
                out.push((pk.key("address"), format!("GPIO {a} does not exist (0–27)")))
            }
            Some(a) => {
                if let Some(prev) = pins.insert(a, pi) {
                    out.push((
                        pk.key("address"),
                        format!("GPIO {a} is already used by points[{prev}]"),
                    ));
                }
            }
        }
    }
    out
}

/// An enabled GPIO device `d` (at key path `k`) on a machine, or a build,
/// that cannot drive it: `run` refuses such a file; `check-config` warns,
/// as the file may be meant for another machine.
pub fn missing_hardware(d: &DeviceConfig, k: &KeyPath) -> Option<(KeyPath, String)> {
    if d.gpio.is_none() || !d.enabled {
        return None;
    }
    probed().err().map(|e| (k.key("gpio"), e.to_string()))
}

/// [`hw::probe`], once per process.
fn probed() -> Result<(), GpioError> {
    static PROBE: std::sync::OnceLock<Result<(), GpioError>> = std::sync::OnceLock::new();
    PROBE.get_or_init(hw::probe).clone()
}

/// Start one task per enabled GPIO device, on the Pi's pins, each
/// registering its output points' writer in `writers`.
pub fn spawn(
    cfg: &LoadedConfig,
    bus: mpsc::Sender<BusMessage>,
    shutdown: CancellationToken,
    status: Option<&GatewayStatus>,
    writers: &mut Writers,
) -> Vec<JoinHandle<()>> {
    spawn_where(cfg, bus, shutdown, status, writers, &|_| true)
}

/// [`spawn`] for the one GPIO device `device` (a configuration reload
/// restarts devices one by one).
pub fn spawn_device(
    cfg: &LoadedConfig,
    device: &str,
    bus: mpsc::Sender<BusMessage>,
    shutdown: CancellationToken,
    status: Option<&GatewayStatus>,
    writers: &mut Writers,
) -> Vec<JoinHandle<()>> {
    spawn_where(cfg, bus, shutdown, status, writers, &|d| d == device)
}

fn spawn_where(
    cfg: &LoadedConfig,
    bus: mpsc::Sender<BusMessage>,
    shutdown: CancellationToken,
    status: Option<&GatewayStatus>,
    writers: &mut Writers,
    only: &dyn Fn(&str) -> bool,
) -> Vec<JoinHandle<()>> {
    let mut handles = Vec::new();
    for (di, d) in cfg.config.devices.iter().enumerate() {
        let Some(g) = &d.gpio else { continue };
        if !only(&d.id) {
            continue;
        }
        if !d.enabled {
            info!(device = %d.id, "device disabled; GPIO not used");
            continue;
        }
        let mut inputs = Vec::new();
        let mut outputs = Vec::new();
        for (index, meta) in cfg.points.iter().filter(|(_, m)| m.device_index == di) {
            let p = cfg.point_config(meta);
            let Some(pin) = p.address.and_then(|a| u8::try_from(a).ok()) else {
                continue;
            };
            match p.register {
                Some(RegisterKind::Coil) => outputs.push((index, pin)),
                Some(RegisterKind::DiscreteInput) => inputs.push((index, pin)),
                _ => {}
            }
        }
        let (tx, rx) = mpsc::channel(16);
        let id: Arc<str> = d.id.as_str().into();
        if !outputs.is_empty() {
            writers.insert(id.clone(), tx);
        }
        let mut task = GpioTask::new(
            id.clone(),
            g.clone(),
            inputs,
            outputs,
            Box::new(hw::RppalOpener),
            bus.clone(),
            rx,
        );
        if let Some(s) = status {
            task = task.with_heartbeat(
                s.liveness
                    .register(format!("gpio {id}"), Duration::from_secs(2)),
            );
        }
        handles.push(tokio::spawn(task.run(shutdown.clone())));
    }
    handles
}

struct Input {
    point: PointIndex,
    pin: u8,
    debounce: Debouncer,
}

struct Output {
    point: PointIndex,
    pin: u8,
    /// Logical state (`true` = active).
    on: bool,
    /// A pulse in progress: revert to this state at that time.
    revert: Option<(Instant, bool)>,
}

/// One GPIO device's task.
pub struct GpioTask {
    device: Arc<str>,
    cfg: GpioDeviceConfig,
    inputs: Vec<Input>,
    outputs: Vec<Output>,
    opener: Box<dyn Opener>,
    bus: mpsc::Sender<BusMessage>,
    writes: mpsc::Receiver<WriteRequest>,
    heartbeat: Option<Heartbeat>,
}

/// Retry delay when the pins cannot be opened.
const REOPEN: Duration = Duration::from_secs(5);

impl GpioTask {
    /// A task over `inputs` and `outputs` (point, BCM pin).
    pub fn new(
        device: Arc<str>,
        cfg: GpioDeviceConfig,
        inputs: Vec<(PointIndex, u8)>,
        outputs: Vec<(PointIndex, u8)>,
        opener: Box<dyn Opener>,
        bus: mpsc::Sender<BusMessage>,
        writes: mpsc::Receiver<WriteRequest>,
    ) -> GpioTask {
        GpioTask {
            inputs: inputs
                .into_iter()
                .map(|(point, pin)| Input {
                    point,
                    pin,
                    debounce: Debouncer::new(cfg.debounce),
                })
                .collect(),
            outputs: outputs
                .into_iter()
                .map(|(point, pin)| Output {
                    point,
                    pin,
                    on: false,
                    revert: None,
                })
                .collect(),
            device,
            cfg,
            opener,
            bus,
            writes,
            heartbeat: None,
        }
    }

    /// Beat `hb` once per loop iteration.
    pub fn with_heartbeat(mut self, hb: Heartbeat) -> Self {
        self.heartbeat = Some(hb);
        self
    }

    fn beat(&self, within: Duration) {
        if let Some(hb) = &self.heartbeat {
            hb.beat_within(within);
        }
    }

    /// Run until `shutdown` (or until the bus closes); outputs end inactive.
    pub async fn run(self, shutdown: CancellationToken) {
        let span = tracing::info_span!("gpio_device", device = %self.device);
        self.run_inner(shutdown).instrument(span).await
    }

    async fn run_inner(mut self, shutdown: CancellationToken) {
        let in_pins: Vec<u8> = self.inputs.iter().map(|i| i.pin).collect();
        let out_pins: Vec<(u8, bool)> = self
            .outputs
            .iter()
            .map(|o| (o.pin, o_level(false, self.cfg.outputs_active_low)))
            .collect();
        let mut offline = false;
        let mut pins: Box<dyn Pins> = loop {
            self.beat(REOPEN + Duration::from_secs(2));
            match self.opener.open(&self.cfg, &in_pins, &out_pins) {
                Ok(p) => break p,
                Err(e) => {
                    if !offline {
                        error!(error = %e, retry_in_s = REOPEN.as_secs(), "cannot open GPIO pins");
                        offline = true;
                        let msg = BusMessage::DeviceStatus {
                            device: self.device.clone(),
                            ts: Timestamp::now(),
                            online: false,
                            reason: Some(e.to_string()),
                        };
                        if !crate::drivers::send_or_stop(&self.bus, msg, &shutdown).await {
                            return;
                        }
                    }
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(REOPEN) => {}
                    }
                }
            }
        };
        info!(
            inputs = in_pins.len(),
            outputs = out_pins.len(),
            "GPIO pins open; outputs inactive"
        );
        let mut first: Vec<BusMessage> = Vec::new();
        if offline {
            first.push(BusMessage::DeviceStatus {
                device: self.device.clone(),
                ts: Timestamp::now(),
                online: true,
                reason: None,
            });
        }
        let outputs: Vec<Reading> = self
            .outputs
            .iter()
            .map(|o| Reading {
                point: o.point,
                value: Value::Bool(false),
            })
            .collect();
        if !outputs.is_empty() {
            first.push(self.readings(outputs));
        }
        for m in first {
            if !crate::drivers::send_or_stop(&self.bus, m, &shutdown).await {
                self.safe_state(pins.as_mut());
                return;
            }
        }

        let mut tick = tokio::time::interval(self.cfg.sample);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut writes_open = true;
        loop {
            self.beat(self.cfg.sample + Duration::from_secs(2));
            let changed = tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                req = self.writes.recv(), if writes_open => match req {
                    Some(req) => self.write(pins.as_mut(), req),
                    None => {
                        writes_open = false;
                        Vec::new()
                    }
                },
                _ = tick.tick() => self.sample(pins.as_mut(), Instant::now()),
            };
            if !changed.is_empty() {
                let msg = self.readings(changed);
                if !crate::drivers::send_or_stop(&self.bus, msg, &shutdown).await {
                    info!("bus closed; GPIO task stops");
                    break;
                }
            }
        }
        self.safe_state(pins.as_mut());
    }

    fn readings(&self, readings: Vec<Reading>) -> BusMessage {
        BusMessage::Readings {
            device: self.device.clone(),
            ts: Timestamp::now(),
            replied_at: std::time::Instant::now(),
            readings,
        }
    }

    /// Sample the inputs and end due pulses; the points that changed.
    fn sample(&mut self, pins: &mut dyn Pins, now: Instant) -> Vec<Reading> {
        let mut changed = Vec::new();
        let active_low = self.cfg.inputs_active_low;
        for i in &mut self.inputs {
            let high = pins.read(i.pin);
            if let Some(on) = i.debounce.sample(now.into_std(), high != active_low) {
                changed.push(Reading {
                    point: i.point,
                    value: Value::Bool(on),
                });
            }
        }
        let inverted = self.cfg.outputs_active_low;
        for o in &mut self.outputs {
            if let Some((at, on)) = o.revert {
                if now >= at {
                    o.revert = None;
                    o.on = on;
                    pins.write(o.pin, o_level(on, inverted));
                    changed.push(Reading {
                        point: o.point,
                        value: Value::Bool(on),
                    });
                }
            }
        }
        changed
    }

    /// Execute one write; replies, and returns the output's new reading.
    fn write(&mut self, pins: &mut dyn Pins, req: WriteRequest) -> Vec<Reading> {
        let inverted = self.cfg.outputs_active_low;
        let result = (|| {
            let o = self
                .outputs
                .iter_mut()
                .find(|o| o.point == req.point)
                .ok_or(WriteError::NotWritable)?;
            let on = match req.value {
                Value::Bool(b) => b,
                Value::Int(0) => false,
                Value::Int(1) => true,
                v => return Err(WriteError::BadValue(format!("{v:?} is not a bool"))),
            };
            pins.write(o.pin, o_level(on, inverted));
            o.on = on;
            o.revert = req.pulse.map(|d| (Instant::now() + d, !on));
            info!(pin = o.pin, on, pulse = ?req.pulse, "GPIO output set");
            Ok(Reading {
                point: o.point,
                value: Value::Bool(on),
            })
        })();
        match result {
            Ok(r) => {
                let _ = req.reply.send(Ok(()));
                vec![r]
            }
            Err(e) => {
                warn!(point = req.point, error = %e, "GPIO write refused");
                let _ = req.reply.send(Err(e));
                Vec::new()
            }
        }
    }

    /// Drive every output inactive.
    fn safe_state(&mut self, pins: &mut dyn Pins) {
        for o in &mut self.outputs {
            o.on = false;
            o.revert = None;
            pins.write(o.pin, o_level(false, self.cfg.outputs_active_low));
        }
        if !self.outputs.is_empty() {
            info!("GPIO outputs set to their safe (inactive) state");
        }
    }
}

/// Electrical level of an output in logical state `on`.
fn o_level(on: bool, inverted: bool) -> bool {
    on != inverted
}

#[cfg(test)]
mod tests;
