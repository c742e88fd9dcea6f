//! Hardware access behind two small traits, so the polling logic can be
//! tested with a fake: a [`Connector`] opens a link (TCP connection, serial
//! port), a [`Transport`] reads from it. Both use the gateway's own framing:
//! MBAP on TCP ([`super::mbap`]), RTU on serial lines ([`super::rtu`]).
//!
//! Timeouts are not the transport's business: the endpoint task wraps every
//! call in `tokio::time::timeout` and drops the link after one. A serial
//! line also asks the endpoint, through [`Connector::quiet_until`], to send
//! nothing for a while after a lost reply (see [`super::rtu`]).

use super::config::{Parity, SerialBusConfig};
use super::mbap::MbapLink;
use super::rtu::{Quiet, RtuLink};
use std::future::Future;
use std::io;
use std::time::Duration;
use tokio::time::Instant;
use tokio_modbus::ExceptionCode;

/// Why a request or a connection failed.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum ModbusError {
    /// No reply within the device's timeout.
    #[error("no reply within {0:?}")]
    Timeout(Duration),
    /// The link could not be opened.
    #[error("cannot connect to {endpoint}: {message}")]
    Connect { endpoint: String, message: String },
    /// The link is down and the next reconnect attempt is not due yet.
    #[error("not connected ({0})")]
    NotConnected(String),
    /// Reading or writing the link failed.
    #[error("i/o error: {0}")]
    Io(String),
    /// The device answered with a Modbus exception.
    #[error("device exception {code} ({name}) to {function}")]
    Exception {
        function: &'static str,
        code: u8,
        name: &'static str,
    },
    /// The reply does not match the request (wrong header, function or length).
    #[error("bad reply: {0}")]
    Protocol(String),
}

impl ModbusError {
    /// Must the link be dropped? After a timeout a late reply would be taken
    /// for the next request's; after an I/O or framing error the link's state
    /// is unknown. A Modbus exception is a proper reply: the link is fine.
    pub fn drops_link(&self) -> bool {
        !matches!(
            self,
            ModbusError::Exception { .. } | ModbusError::NotConnected(_)
        )
    }

    /// Coarse class used to log an error once per change, not every poll.
    pub fn class(&self) -> (u8, u8) {
        match self {
            ModbusError::Timeout(_) => (0, 0),
            ModbusError::Connect { .. } | ModbusError::NotConnected(_) => (1, 0),
            ModbusError::Io(_) => (2, 0),
            ModbusError::Exception { code, .. } => (3, *code),
            ModbusError::Protocol(_) => (4, 0),
        }
    }

    pub(super) fn exception(function: &'static str, e: ExceptionCode) -> ModbusError {
        let name = match e {
            ExceptionCode::IllegalFunction => "illegal function",
            ExceptionCode::IllegalDataAddress => "illegal data address",
            ExceptionCode::IllegalDataValue => "illegal data value",
            ExceptionCode::ServerDeviceFailure => "server device failure",
            ExceptionCode::Acknowledge => "acknowledge",
            ExceptionCode::ServerDeviceBusy => "server device busy",
            ExceptionCode::MemoryParityError => "memory parity error",
            ExceptionCode::GatewayPathUnavailable => "gateway path unavailable",
            ExceptionCode::GatewayTargetDevice => "gateway target device failed to respond",
            ExceptionCode::Custom(_) => "unknown exception",
        };
        ModbusError::Exception {
            function,
            code: u8::from(e),
            name,
        }
    }
}

/// An open link to one endpoint; `unit` selects the device on it.
pub trait Transport: Send {
    /// Function 1.
    fn read_coils(
        &mut self,
        unit: u8,
        addr: u16,
        cnt: u16,
    ) -> impl Future<Output = Result<Vec<bool>, ModbusError>> + Send;
    /// Function 2.
    fn read_discrete_inputs(
        &mut self,
        unit: u8,
        addr: u16,
        cnt: u16,
    ) -> impl Future<Output = Result<Vec<bool>, ModbusError>> + Send;
    /// Function 3.
    fn read_holding(
        &mut self,
        unit: u8,
        addr: u16,
        cnt: u16,
    ) -> impl Future<Output = Result<Vec<u16>, ModbusError>> + Send;
    /// Function 4.
    fn read_input(
        &mut self,
        unit: u8,
        addr: u16,
        cnt: u16,
    ) -> impl Future<Output = Result<Vec<u16>, ModbusError>> + Send;
    /// Function 5: write one coil.
    fn write_coil(
        &mut self,
        unit: u8,
        addr: u16,
        on: bool,
    ) -> impl Future<Output = Result<(), ModbusError>> + Send;
    /// Function 6: write one holding register.
    fn write_register(
        &mut self,
        unit: u8,
        addr: u16,
        word: u16,
    ) -> impl Future<Output = Result<(), ModbusError>> + Send;
    /// Function 16: write consecutive holding registers (32-bit values).
    fn write_registers(
        &mut self,
        unit: u8,
        addr: u16,
        words: Vec<u16>,
    ) -> impl Future<Output = Result<(), ModbusError>> + Send;
}

/// The framing's part of a link (MBAP over TCP, `super::mbap`; RTU on a
/// serial line, `super::rtu`): send one request PDU to a unit and check
/// its reply against it. Every [`Transport`] function is built on these
/// three the same way for both.
pub trait PduLink: Send {
    /// Read `cnt` bits with function `fc` (1, 2), named `function` in errors.
    fn read_bits(
        &mut self,
        fc: u8,
        function: &'static str,
        unit: u8,
        addr: u16,
        cnt: u16,
    ) -> impl Future<Output = Result<Vec<bool>, ModbusError>> + Send;
    /// Read `cnt` registers with function `fc` (3, 4).
    fn read_words(
        &mut self,
        fc: u8,
        function: &'static str,
        unit: u8,
        addr: u16,
        cnt: u16,
    ) -> impl Future<Output = Result<Vec<u16>, ModbusError>> + Send;
    /// A write (`pdu`: function code and data) whose reply echoes the
    /// request's first four data bytes.
    fn write_echoed(
        &mut self,
        function: &'static str,
        unit: u8,
        pdu: &[u8],
    ) -> impl Future<Output = Result<(), ModbusError>> + Send;
}

/// Most registers one write may carry (function 16).
pub const MAX_WRITE_WORDS: usize = 123;
/// Most bits one read may ask for (function 1, 2).
pub const MAX_READ_BITS: u16 = 2000;
/// Most registers one read may ask for (function 3, 4).
pub const MAX_READ_WORDS: u16 = 125;

/// A read request's PDU (function `fc`, `cnt` values from `addr`), or why
/// it cannot be sent: more values than one read may carry.
pub(super) fn read_pdu(fc: u8, addr: u16, cnt: u16) -> Result<[u8; 5], ModbusError> {
    let (max, what) = match fc {
        1 | 2 => (MAX_READ_BITS, "bits"),
        _ => (MAX_READ_WORDS, "registers"),
    };
    if !(1..=max).contains(&cnt) {
        return Err(protocol(format!("cannot read {cnt} {what} at once")));
    }
    let [a0, a1] = addr.to_be_bytes();
    let [c0, c1] = cnt.to_be_bytes();
    Ok([fc, a0, a1, c0, c1])
}

/// The `cnt` bits of a read reply's `data` (its byte count, then the
/// bytes), least significant first, when it carries exactly those.
pub(super) fn unpack_bits(function: &str, data: &[u8], cnt: u16) -> Result<Vec<bool>, ModbusError> {
    let bits = data_bytes(function, data, cnt, "bits", (cnt as usize).div_ceil(8))?;
    Ok((0..cnt as usize)
        .map(|i| bits[i / 8] & (1 << (i % 8)) != 0)
        .collect())
}

/// The `cnt` registers of a read reply's `data`, when it carries exactly
/// those.
pub(super) fn unpack_words(function: &str, data: &[u8], cnt: u16) -> Result<Vec<u16>, ModbusError> {
    let words = data_bytes(function, data, cnt, "registers", cnt as usize * 2)?;
    Ok(words
        .chunks_exact(2)
        .map(|w| u16::from_be_bytes([w[0], w[1]]))
        .collect())
}

/// The data bytes of a read reply (`data`: byte count, then the bytes),
/// when they are exactly the `bytes` that `cnt` values take.
pub(super) fn data_bytes<'a>(
    function: &str,
    data: &'a [u8],
    cnt: u16,
    what: &str,
    bytes: usize,
) -> Result<&'a [u8], ModbusError> {
    match data.split_first() {
        Some((&n, rest)) if n as usize == bytes && rest.len() == bytes => Ok(rest),
        Some((&n, _)) => Err(protocol(format!(
            "{function}: asked for {cnt} {what} ({bytes} data bytes), got {n} data bytes"
        ))),
        None => Err(protocol(format!("{function}: reply without a byte count"))),
    }
}

/// A reply that does not match its request.
pub(super) fn protocol(message: String) -> ModbusError {
    ModbusError::Protocol(message)
}

/// A failed read or write of the link.
pub(super) fn io_error(e: io::Error) -> ModbusError {
    ModbusError::Io(e.to_string())
}

impl<T: PduLink> Transport for T {
    async fn read_coils(
        &mut self,
        unit: u8,
        addr: u16,
        cnt: u16,
    ) -> Result<Vec<bool>, ModbusError> {
        self.read_bits(1, "read coils", unit, addr, cnt).await
    }

    async fn read_discrete_inputs(
        &mut self,
        unit: u8,
        addr: u16,
        cnt: u16,
    ) -> Result<Vec<bool>, ModbusError> {
        self.read_bits(2, "read discrete inputs", unit, addr, cnt)
            .await
    }

    async fn read_holding(
        &mut self,
        unit: u8,
        addr: u16,
        cnt: u16,
    ) -> Result<Vec<u16>, ModbusError> {
        self.read_words(3, "read holding registers", unit, addr, cnt)
            .await
    }

    async fn read_input(&mut self, unit: u8, addr: u16, cnt: u16) -> Result<Vec<u16>, ModbusError> {
        self.read_words(4, "read input registers", unit, addr, cnt)
            .await
    }

    async fn write_coil(&mut self, unit: u8, addr: u16, on: bool) -> Result<(), ModbusError> {
        let [a0, a1] = addr.to_be_bytes();
        let v = if on { 0xFF } else { 0x00 };
        self.write_echoed("write single coil", unit, &[5, a0, a1, v, 0])
            .await
    }

    async fn write_register(&mut self, unit: u8, addr: u16, word: u16) -> Result<(), ModbusError> {
        let [a0, a1] = addr.to_be_bytes();
        let [w0, w1] = word.to_be_bytes();
        self.write_echoed("write single register", unit, &[6, a0, a1, w0, w1])
            .await
    }

    async fn write_registers(
        &mut self,
        unit: u8,
        addr: u16,
        words: Vec<u16>,
    ) -> Result<(), ModbusError> {
        if words.is_empty() || words.len() > MAX_WRITE_WORDS {
            return Err(protocol(format!(
                "cannot write {} registers at once",
                words.len()
            )));
        }
        let [a0, a1] = addr.to_be_bytes();
        let [q0, q1] = (words.len() as u16).to_be_bytes();
        let mut pdu = Vec::with_capacity(6 + words.len() * 2);
        pdu.extend_from_slice(&[16, a0, a1, q0, q1, (words.len() * 2) as u8]);
        for w in &words {
            pdu.extend_from_slice(&w.to_be_bytes());
        }
        self.write_echoed("write multiple registers", unit, &pdu)
            .await
    }
}

/// Opens links to one endpoint (a TCP host:port, or a serial port).
pub trait Connector: Send {
    type Link: Transport;
    /// Open a new link.
    fn connect(&mut self) -> impl Future<Output = Result<Self::Link, ModbusError>> + Send;
    /// The endpoint's name for logs (`host:port`, `/dev/ttyUSB0`).
    fn name(&self) -> &str;
    /// No request may go out before this instant (a serial line after a
    /// lost reply: see [`super::rtu`]). The endpoint waits for it outside
    /// the next request's timeout.
    fn quiet_until(&self) -> Option<Instant> {
        None
    }
}

/// Modbus TCP: one connection to `host:port`, shared by every unit there.
pub struct TcpConnector {
    endpoint: String,
}

impl TcpConnector {
    pub fn new(host: &str, port: u16) -> TcpConnector {
        let endpoint = if host.contains(':') && !host.starts_with('[') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        TcpConnector { endpoint }
    }
}

impl Connector for TcpConnector {
    type Link = MbapLink<tokio::net::TcpStream>;

    async fn connect(&mut self) -> Result<Self::Link, ModbusError> {
        let err = |e: io::Error| ModbusError::Connect {
            endpoint: self.endpoint.clone(),
            message: e.to_string(),
        };
        let stream = tokio::net::TcpStream::connect(self.endpoint.as_str())
            .await
            .map_err(err)?;
        // Requests are small and latency matters more than packet count.
        stream.set_nodelay(true).map_err(err)?;
        Ok(MbapLink::new(stream))
    }

    fn name(&self) -> &str {
        &self.endpoint
    }
}

/// Modbus RTU: one serial port for every slave on an RS-485 line.
pub struct RtuConnector {
    bus: SerialBusConfig,
    /// The line's quiet time, kept across the links opened on it.
    quiet: Quiet,
}

impl RtuConnector {
    pub fn new(bus: SerialBusConfig) -> RtuConnector {
        RtuConnector {
            bus,
            quiet: Quiet::default(),
        }
    }
}

impl Connector for RtuConnector {
    type Link = RtuLink<tokio_serial::SerialStream>;

    async fn connect(&mut self) -> Result<Self::Link, ModbusError> {
        use tokio_serial::{DataBits, SerialPort as _, SerialPortBuilderExt as _, StopBits};
        let b = &self.bus;
        let err = |e: tokio_serial::Error| ModbusError::Connect {
            endpoint: b.path.clone(),
            message: e.to_string(),
        };
        let port = tokio_serial::new(&b.path, b.baud)
            .data_bits(if b.data_bits == 7 {
                DataBits::Seven
            } else {
                DataBits::Eight
            })
            .parity(match b.parity {
                Parity::None => tokio_serial::Parity::None,
                Parity::Even => tokio_serial::Parity::Even,
                Parity::Odd => tokio_serial::Parity::Odd,
            })
            .stop_bits(if b.stop_bits == 2 {
                StopBits::Two
            } else {
                StopBits::One
            })
            .open_native_async()
            .map_err(err)?;
        // Bytes left over from before (a late reply to a timed-out request)
        // would be taken for the next reply (cleared before every request
        // too).
        port.clear(tokio_serial::ClearBuffer::Input).map_err(err)?;
        let char_time = Duration::from_secs_f64(b.bits_per_char() as f64 / b.baud.max(1) as f64);
        Ok(RtuLink::new(port, char_time, self.quiet.clone()))
    }

    fn name(&self) -> &str {
        &self.bus.path
    }

    fn quiet_until(&self) -> Option<Instant> {
        self.quiet.until()
    }
}
