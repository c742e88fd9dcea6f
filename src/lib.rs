//! estate-gateway: the edge gateway of a villa estate's security system.
//!
//! Data flows one way, commands the other:
//!
//! ```text
//! drivers/ ──BusMessage──▶ alarm/ (engine task) ──NewEvent──▶ journal/ ──▶ uplink/
//!  modbus, mqtt            telemetry/ (by exception) ─────────▶ journal/      (central platform)
//! ```
//!
//! - [`config`]: the typed TOML file, loading and validation (every problem at once).
//! - [`event`]: the one event type, serialized as the uplink contract says.
//! - [`point`]: point values, qualities and the bus messages drivers send.
//! - [`drivers`]: field protocols (Modbus TCP/RTU, MQTT devices and the
//!   embedded site broker, the Pi's GPIO), one task each, never dying.
//! - [`alarm`]: rules, ISA-18.2 states, latching, delays (pure), and its task.
//! - [`arming`]: zones armed/disarmed by schedule and operators; survives restarts.
//! - [`linkage`]: alarm raised/cleared → local actions (doors, fans), no uplink needed.
//! - [`cameras`]: RTSP cameras (retina): health, video loss, pre-alarm buffer, clips.
//! - [`command`]: the one command path (platform and the local web page), allow-listed, audited.
//! - [`telemetry`]: report by exception (pure).
//! - [`journal`]: durable event log on sled with per-sink cursors.
//! - [`uplink`]: MQTT to the central platform.
//! - [`push`]: alarms to security staff (WeCom, DingTalk, Feishu, webhook, SMS), escalation.
//! - [`status`]: live counters for the heartbeat, metrics and health.
//! - [`service`]: systemd readiness, watchdog and the main loops' liveness.
//! - [`web`]: the local web page (accounts, sessions, alarm console, devices) and its JSON API, `/metrics`, `/healthz`.
//! - [`app`]: wiring, signals and the one shutdown path.
//! - [`demo`]: simulated devices and platform for `estate-gateway demo`.

pub mod alarm;
pub mod app;
pub mod arming;
pub mod cameras;
pub mod command;
pub mod config;
pub mod demo;
pub mod drivers;
pub mod event;
pub mod journal;
pub mod linkage;
pub mod logging;
pub mod point;
pub mod push;
pub mod service;
pub mod status;
pub mod supervise;
pub mod telemetry;
pub mod uplink;
pub mod web;
