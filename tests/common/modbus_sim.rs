//! The pymodbus device simulator (`tests/peers/modbus_sim.py`) as a test peer.
//!
//! Include it next to `mod common;` with
//! `#[path = "common/modbus_sim.rs"] mod modbus_sim;`.
//!
//! [`ModbusSim::start_tcp`] serves Modbus TCP on a free loopback port;
//! [`ModbusSim::start_rtu`] serves Modbus RTU on one end of a socat pty pair
//! and hands the gateway the other end. Both also open a control port (Modbus
//! TCP on the same datastore) that [`ModbusSim::write_register`] and friends
//! use to change values while the gateway reads. The processes are killed on
//! drop.
#![allow(dead_code)]

use crate::common::{free_port, peer_or_skip, python, repo, wait_for, which};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;
use tokio_modbus::client::Writer as _;
use tokio_modbus::Slave;

/// A running simulator.
pub struct ModbusSim {
    child: Option<Child>,
    socat: Option<Child>,
    /// Modbus TCP port (TCP mode; the first of `tcp_ports`).
    pub tcp_port: Option<u16>,
    /// Every Modbus TCP port (each a device on the same datastore).
    pub tcp_ports: Vec<u16>,
    /// Serial device the gateway opens (RTU mode).
    pub gateway_tty: Option<PathBuf>,
    /// Control port (Modbus TCP on the same datastore).
    pub control_port: u16,
    units: Vec<u8>,
    _dir: Option<tempfile::TempDir>,
}

fn script() -> PathBuf {
    repo().join("tests/peers/modbus_sim.py")
}

/// Python with pymodbus, or a loud skip.
fn python_or_skip() -> Option<PathBuf> {
    let py = python().filter(|p| {
        Command::new(p)
            .args(["-c", "import pymodbus"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    });
    peer_or_skip(
        "pymodbus",
        py,
        "needs .venv/bin/python with pymodbus 3.16 (or GATEWAY_TEST_PYTHON)",
    )
}

fn units_arg(units: &[u8]) -> String {
    units
        .iter()
        .map(|u| u.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// Spawn the simulator and wait for its READY line.
fn spawn_sim(py: &Path, args: &[String]) -> Child {
    let mut child = Command::new(py)
        .arg(script())
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start modbus_sim.py");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if line.trim() == "READY" {
                let _ = tx.send(());
            }
        }
    });
    if rx.recv_timeout(Duration::from_secs(30)).is_err() {
        let _ = child.kill();
        let status = child.wait();
        panic!("modbus_sim.py did not print READY within 30 s ({status:?}), args {args:?}");
    }
    child
}

impl ModbusSim {
    /// Modbus TCP on a free port serving `units`. `None` when skipped.
    pub fn start_tcp(units: &[u8]) -> Option<ModbusSim> {
        Self::start_tcp_on(free_port(), units)
    }

    /// Modbus TCP on `port` (to restart a killed simulator at the same address).
    pub fn start_tcp_on(port: u16, units: &[u8]) -> Option<ModbusSim> {
        Self::start_tcp_ports(&[port], units)
    }

    /// Modbus TCP on each of `ports` (many devices, one datastore).
    pub fn start_tcp_ports(ports: &[u16], units: &[u8]) -> Option<ModbusSim> {
        Self::start_tcp_ports_with(ports, units, false)
    }

    /// [`start_tcp_ports`](Self::start_tcp_ports); with `changing`, holding
    /// register 0 takes a new value on every read of holding registers, so
    /// every poll sees changed values.
    pub fn start_tcp_ports_with(ports: &[u16], units: &[u8], changing: bool) -> Option<ModbusSim> {
        let py = python_or_skip()?;
        let control_port = free_port();
        let mut args: Vec<String> = vec![
            "--tcp-port".into(),
            ports
                .iter()
                .map(|p| p.to_string())
                .collect::<Vec<_>>()
                .join(","),
            "--control-port".into(),
            control_port.to_string(),
            "--units".into(),
            units_arg(units),
        ];
        if changing {
            args.push("--changing".into());
        }
        let child = spawn_sim(&py, &args);
        Some(ModbusSim {
            child: Some(child),
            socat: None,
            tcp_port: ports.first().copied(),
            tcp_ports: ports.to_vec(),
            gateway_tty: None,
            control_port,
            units: units.to_vec(),
            _dir: None,
        })
    }

    /// Modbus RTU at `baud` on a socat pty pair serving `units`; the gateway
    /// opens [`ModbusSim::gateway_tty`]. `None` when skipped.
    pub fn start_rtu(units: &[u8], baud: u32) -> Option<ModbusSim> {
        Self::start_rtu_slow(units, baud, &[])
    }

    /// [`start_rtu`](Self::start_rtu), with each `(unit, delay)` of `slow`
    /// answering its reads `delay` late (blocking the simulator meanwhile,
    /// as a busy line would).
    pub fn start_rtu_slow(units: &[u8], baud: u32, slow: &[(u8, Duration)]) -> Option<ModbusSim> {
        let py = python_or_skip()?;
        let socat_bin = peer_or_skip("socat", which("socat"), "apt-get install socat")?;
        let dir = tempfile::tempdir().unwrap();
        let sim_tty = dir.path().join("sim");
        let gw_tty = dir.path().join("gw");
        let socat = Command::new(socat_bin)
            .arg("-d")
            .arg(format!("pty,raw,echo=0,link={}", sim_tty.display()))
            .arg(format!("pty,raw,echo=0,link={}", gw_tty.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start socat");
        wait_for(Duration::from_secs(10), "socat pty pair", || {
            (sim_tty.exists() && gw_tty.exists()).then_some(())
        });
        let control_port = free_port();
        let mut args: Vec<String> = vec![
            "--rtu-port".into(),
            sim_tty.display().to_string(),
            "--baud".into(),
            baud.to_string(),
            "--control-port".into(),
            control_port.to_string(),
            "--units".into(),
            units_arg(units),
        ];
        for (unit, delay) in slow {
            args.push("--slow".into());
            args.push(format!("{unit}={}", delay.as_secs_f64()));
        }
        let child = spawn_sim(&py, &args);
        Some(ModbusSim {
            child: Some(child),
            socat: Some(socat),
            tcp_port: None,
            tcp_ports: Vec::new(),
            gateway_tty: Some(gw_tty),
            control_port,
            units: units.to_vec(),
            _dir: Some(dir),
        })
    }

    /// Kill the simulator now (the device "dies").
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    async fn control(&self, unit: u8) -> tokio_modbus::client::Context {
        let addr = ([127, 0, 0, 1], self.control_port).into();
        tokio_modbus::client::tcp::connect_slave(addr, Slave(unit))
            .await
            .expect("connect to the simulator's control port")
    }

    /// Write holding registers of `unit` from `addr` on.
    pub async fn write_registers(&self, unit: u8, addr: u16, words: &[u16]) {
        let mut c = self.control(unit).await;
        c.write_multiple_registers(addr, words)
            .await
            .expect("control write")
            .expect("control write exception");
    }

    /// Write one holding register.
    pub async fn write_register(&self, unit: u8, addr: u16, word: u16) {
        self.write_registers(unit, addr, &[word]).await
    }

    /// Write one coil.
    pub async fn write_coil(&self, unit: u8, addr: u16, on: bool) {
        let mut c = self.control(unit).await;
        c.write_single_coil(addr, on)
            .await
            .expect("control write")
            .expect("control write exception");
    }
}

impl Drop for ModbusSim {
    fn drop(&mut self) {
        self.kill();
        if let Some(mut s) = self.socat.take() {
            let _ = s.kill();
            let _ = s.wait();
        }
    }
}
