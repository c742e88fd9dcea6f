//! Reading a simulated device's coils and registers from the outside, over
//! the simulator's control port (Modbus TCP on the same datastore): what a
//! technician with a Modbus tool would see after the gateway wrote.
//!
//! Include it next to `mod common;` with
//! `#[path = "common/modbus_probe.rs"] mod modbus_probe;`.
#![allow(dead_code)]

use std::time::{Duration, Instant};
use tokio_modbus::client::Reader as _;
use tokio_modbus::Slave;

/// A client on a simulator's control port.
pub struct Probe {
    ctx: tokio_modbus::client::Context,
}

impl Probe {
    pub async fn connect(control_port: u16, unit: u8) -> Probe {
        let addr = ([127, 0, 0, 1], control_port).into();
        let ctx = tokio_modbus::client::tcp::connect_slave(addr, Slave(unit))
            .await
            .expect("connect to the simulator's control port");
        Probe { ctx }
    }

    /// Coils `addr..addr + n`.
    pub async fn coils(&mut self, addr: u16, n: u16) -> Vec<bool> {
        self.ctx
            .read_coils(addr, n)
            .await
            .expect("probe read")
            .expect("probe read exception")
    }

    /// Holding registers `addr..addr + n`.
    pub async fn holding(&mut self, addr: u16, n: u16) -> Vec<u16> {
        self.ctx
            .read_holding_registers(addr, n)
            .await
            .expect("probe read")
            .expect("probe read exception")
    }

    /// Everything a write could change (coils and holding registers 0..64).
    pub async fn snapshot(&mut self) -> (Vec<bool>, Vec<u16>) {
        (self.coils(0, 64).await, self.holding(0, 64).await)
    }

    /// Poll coil `addr` every millisecond until it reads `want`; how long
    /// that took from `since`, or `None` after `timeout`.
    pub async fn wait_coil(
        &mut self,
        addr: u16,
        want: bool,
        since: Instant,
        timeout: Duration,
    ) -> Option<Duration> {
        loop {
            if self.coils(addr, 1).await[0] == want {
                return Some(since.elapsed());
            }
            if since.elapsed() > timeout {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}
