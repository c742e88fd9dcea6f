//! Modbus RTU client framing ("Modbus over Serial Line" V1.02), one request
//! at a time on an RS-485 line.
//!
//! The gateway's own, like [`super::mbap`] for TCP, because tokio-modbus's
//! RTU client (0.17) checks only a reply's slave id and function code: a
//! reply with more registers or bits than asked for passed, one with fewer
//! tripped a `debug_assert_eq!` in it (a panic of the bus task in debug
//! builds), and after a bad CRC it dropped bytes until some frame fit, so
//! garbage on the line looked like a dead slave ("no reply"). Here every
//! reply is checked against its request (CRC, slave id, function code, byte
//! count, echoed write) and any mismatch is a [`ModbusError::Protocol`] that
//! names what was expected and what came; the endpoint then drops the link.
//! No timeouts here: the endpoint wraps every call (see [`super::transport`]).
//!
//! Late replies. An RTU frame carries no transaction id, so a reply that
//! comes after the endpoint gave up on its request would be taken for the
//! next request's (another slave's, or the read before a bit write). So:
//! - the input is cleared right before every request is sent;
//! - a request that ends without a proper reply (abandoned at the
//!   endpoint's timeout, or answered with garbage) asks for a quiet time,
//!   [`quiet_time`], through the line's [`Quiet`]: the endpoint sends
//!   nothing before it is over, and whatever the slave sent meanwhile is
//!   cleared with the input before the next request.
//!
//! Leading bytes that cannot be a slave address (0 and 248–255: some RS-485
//! transceivers emit one when they switch direction) are skipped.

use super::transport::{
    io_error, protocol, read_pdu, unpack_bits, unpack_words, ModbusError, PduLink,
};
use std::io;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::time::Instant;
use tokio_modbus::ExceptionCode;

/// The longest frame a reply's byte count can announce: slave id, function
/// code, byte count, 255 data bytes, CRC (the spec's limit is 256).
const MAX_FRAME: usize = 5 + 255;

/// Shortest quiet time after a lost reply. USB RS-485 adapters hand
/// received bytes over in bursts (an FTDI chip every 16 ms by default), and
/// the OS and the slave's own turnaround add more: at high baud rates a
/// few character times are far too short to be sure the line is done.
pub const MIN_QUIET: Duration = Duration::from_millis(100);
/// Longest quiet time: every other slave on the bus waits that long.
pub const MAX_QUIET: Duration = Duration::from_secs(3);

/// How long to keep the line quiet after a request that got no proper
/// reply within `waited`, whose reply would take `reply` to transmit.
///
/// A slave that overran the timeout is most likely a slow one that answers
/// soon after: allow it half the wait again to start answering, plus the
/// reply's own time on the line; at least [`MIN_QUIET`], at most
/// [`MAX_QUIET`]. (Timeout 1 s at 9600 baud, one register: 0.5 s + 7
/// characters, quiet until 1.51 s, so a reply at 1.2 s is over and cleared
/// before the next request; without it, it was taken for that request's.)
pub fn quiet_time(waited: Duration, reply: Duration) -> Duration {
    (waited / 2 + reply).clamp(MIN_QUIET, MAX_QUIET)
}

/// Until when an RS-485 line must carry no request: shared by a
/// connector and its links, so it outlives a link dropped after a timeout.
#[derive(Clone, Debug, Default)]
pub struct Quiet(Arc<Mutex<Option<Instant>>>);

impl Quiet {
    /// Keep the line quiet until at least `t`.
    pub fn hold_until(&self, t: Instant) {
        let mut q = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        *q = (*q).max(Some(t));
    }

    /// The end of the longest quiet time asked for (maybe past).
    pub fn until(&self) -> Option<Instant> {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A serial line as an RTU link needs it.
pub trait SerialLine: AsyncRead + AsyncWrite + Unpin + Send {
    /// Throw away what was received and not read yet.
    fn clear_input(&mut self) -> io::Result<()>;
}

impl SerialLine for tokio_serial::SerialStream {
    fn clear_input(&mut self) -> io::Result<()> {
        use tokio_serial::SerialPort as _;
        self.clear(tokio_serial::ClearBuffer::Input)
            .map_err(io::Error::from)
    }
}

/// One request on the line. Dropped before it got a proper reply (the
/// endpoint's timeout dropped the request's future, or the reply was
/// garbage or another request's), it makes the line keep quiet for
/// [`quiet_time`].
struct Pending {
    quiet: Quiet,
    sent: Instant,
    /// Time the expected reply takes on the line.
    reply: Duration,
    answered: bool,
}

impl Drop for Pending {
    fn drop(&mut self) {
        if !self.answered {
            let now = Instant::now();
            self.quiet
                .hold_until(now + quiet_time(now - self.sent, self.reply));
        }
    }
}

/// A Modbus RTU link on an open serial line.
pub struct RtuLink<L> {
    line: L,
    /// Time one character takes on the line.
    char_time: Duration,
    quiet: Quiet,
    /// The request being sent, then the reply being read.
    frame: Box<[u8; MAX_FRAME]>,
}

impl<L: SerialLine> RtuLink<L> {
    /// A link on `line`, whose characters take `char_time` each; `quiet` is
    /// the line's (see [`Quiet`]).
    pub fn new(line: L, char_time: Duration, quiet: Quiet) -> RtuLink<L> {
        RtuLink {
            line,
            char_time,
            quiet,
            frame: Box::new([0; MAX_FRAME]),
        }
    }

    /// Send `pdu` (function code and data) to slave `unit`, whose reply is
    /// `reply_len` bytes long when right; the reply's PDU data after its
    /// function code, or the device's exception. The caller checks the data
    /// and marks the [`Pending`] answered when it is the reply.
    async fn call(
        &mut self,
        function: &'static str,
        unit: u8,
        pdu: &[u8],
        reply_len: usize,
    ) -> Result<(&[u8], Pending), ModbusError> {
        let fc = pdu[0];
        let n = 1 + pdu.len();
        let f = &mut self.frame;
        f[0] = unit;
        f[1..n].copy_from_slice(pdu);
        let crc = crc16(&f[..n]);
        f[n..n + 2].copy_from_slice(&crc.to_le_bytes());
        let mut pending = Pending {
            quiet: self.quiet.clone(),
            sent: Instant::now(),
            reply: self.char_time * reply_len as u32,
            answered: false,
        };
        // Whatever came since the last reply (a late one, noise) is not
        // the answer to this request.
        self.line.clear_input().map_err(io_error)?;
        self.line.write_all(&f[..n + 2]).await.map_err(io_error)?;
        self.line.flush().await.map_err(io_error)?;
        pending.sent = Instant::now();

        let total = self.read_reply().await?;
        let f = &self.frame[..total];
        let got = u16::from_le_bytes([f[total - 2], f[total - 1]]);
        let want = crc16(&f[..total - 2]);
        if got != want {
            return Err(protocol(format!(
                "bad CRC {got:04X} (expected {want:04X}) on a {total}-byte reply"
            )));
        }
        if f[0] != unit {
            return Err(protocol(format!(
                "reply from slave {}, expected slave {unit}",
                f[0]
            )));
        }
        match f[1] {
            c if c == fc => Ok((&f[2..total - 2], pending)),
            c if c == fc | 0x80 => {
                pending.answered = true;
                Err(ModbusError::exception(function, ExceptionCode::new(f[2])))
            }
            c => Err(protocol(format!(
                "reply has function code {c}, expected {fc}"
            ))),
        }
    }

    /// Read one reply frame into `self.frame`; its length. The frame's
    /// length comes from its own function code (and byte count), so a
    /// reply from another slave or to another request is read whole and
    /// then reported for what it is.
    async fn read_reply(&mut self) -> Result<usize, ModbusError> {
        let mut have = 0;
        let mut total = None;
        loop {
            if total.is_none() && have >= 2 {
                let f = &self.frame;
                total = match f[1] {
                    c if c & 0x80 != 0 => Some(5),
                    1..=4 if have >= 3 => Some(5 + f[2] as usize),
                    1..=4 => None,
                    5 | 6 | 15 | 16 => Some(8),
                    c => {
                        return Err(protocol(format!(
                            "reply from slave {} has unknown function code {c}",
                            f[0]
                        )))
                    }
                };
            }
            if total.is_some_and(|t| have >= t) {
                break;
            }
            let n = self
                .line
                .read(&mut self.frame[have..])
                .await
                .map_err(io_error)?;
            if n == 0 {
                return Err(ModbusError::Io("serial line closed".into()));
            }
            have += n;
            if total.is_none() {
                let skip = self.frame[..have]
                    .iter()
                    .take_while(|&&b| b == 0 || b > 247)
                    .count();
                self.frame.copy_within(skip..have, 0);
                have -= skip;
            }
        }
        let total = total.unwrap_or(have);
        if have > total {
            return Err(protocol(format!("{} bytes after the reply", have - total)));
        }
        Ok(total)
    }
}

impl<L: SerialLine> PduLink for RtuLink<L> {
    async fn read_bits(
        &mut self,
        fc: u8,
        function: &'static str,
        unit: u8,
        addr: u16,
        cnt: u16,
    ) -> Result<Vec<bool>, ModbusError> {
        let pdu = read_pdu(fc, addr, cnt)?;
        let reply_len = 5 + (cnt as usize).div_ceil(8);
        let (data, mut pending) = self.call(function, unit, &pdu, reply_len).await?;
        let bits = unpack_bits(function, data, cnt)?;
        pending.answered = true;
        Ok(bits)
    }

    async fn read_words(
        &mut self,
        fc: u8,
        function: &'static str,
        unit: u8,
        addr: u16,
        cnt: u16,
    ) -> Result<Vec<u16>, ModbusError> {
        let pdu = read_pdu(fc, addr, cnt)?;
        let reply_len = 5 + cnt as usize * 2;
        let (data, mut pending) = self.call(function, unit, &pdu, reply_len).await?;
        let words = unpack_words(function, data, cnt)?;
        pending.answered = true;
        Ok(words)
    }

    /// A write whose reply echoes the request's first four data bytes.
    async fn write_echoed(
        &mut self,
        function: &'static str,
        unit: u8,
        pdu: &[u8],
    ) -> Result<(), ModbusError> {
        let want: [u8; 4] = [pdu[1], pdu[2], pdu[3], pdu[4]];
        let (data, mut pending) = self.call(function, unit, pdu, 8).await?;
        if data == want {
            pending.answered = true;
            Ok(())
        } else {
            Err(protocol(format!(
                "{function}: reply does not echo the request"
            )))
        }
    }
}

/// CRC-16/MODBUS (polynomial 0xA001 reflected, initial 0xFFFF), sent low
/// byte first.
pub(super) fn crc16(data: &[u8]) -> u16 {
    let mut crc = 0xFFFFu16;
    for &b in data {
        crc ^= b as u16;
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xA001
            } else {
                crc >> 1
            };
        }
    }
    crc
}

/// An in-memory serial line for tests: one end of a duplex stream.
#[cfg(test)]
pub(super) struct DuplexLine(pub tokio::io::DuplexStream);

#[cfg(test)]
mod duplex_line {
    use super::DuplexLine;
    use std::io;
    use std::pin::Pin;
    use std::task::{Context, Poll, Waker};
    use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

    impl AsyncRead for DuplexLine {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            Pin::new(&mut self.0).poll_read(cx, buf)
        }
    }

    impl AsyncWrite for DuplexLine {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            Pin::new(&mut self.0).poll_write(cx, buf)
        }
        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.0).poll_flush(cx)
        }
        fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.0).poll_shutdown(cx)
        }
    }

    impl super::SerialLine for DuplexLine {
        /// Read whatever is there without waiting, as `tcflush` drops it.
        fn clear_input(&mut self) -> io::Result<()> {
            let mut cx = Context::from_waker(Waker::noop());
            let mut scratch = [0u8; 64];
            loop {
                let mut buf = ReadBuf::new(&mut scratch);
                match Pin::new(&mut self.0).poll_read(&mut cx, &mut buf) {
                    Poll::Ready(Ok(())) if !buf.filled().is_empty() => {}
                    Poll::Ready(Err(e)) => return Err(e),
                    _ => return Ok(()),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::drivers::modbus::transport::{data_bytes, Transport as _};
    use tokio::io::{duplex, DuplexStream};

    const CHAR: Duration = Duration::from_millis(1);

    /// `unit`, `pdu` and their CRC: a frame as on the line.
    pub(crate) fn frame(unit: u8, pdu: &[u8]) -> Vec<u8> {
        let mut f = vec![unit];
        f.extend_from_slice(pdu);
        let crc = crc16(&f);
        f.extend_from_slice(&crc.to_le_bytes());
        f
    }

    fn link() -> (RtuLink<DuplexLine>, DuplexStream, Quiet) {
        let (a, b) = duplex(1024);
        let quiet = Quiet::default();
        (RtuLink::new(DuplexLine(a), CHAR, quiet.clone()), b, quiet)
    }

    /// A slave on the other end: reads one request, checks it, answers
    /// with `reply` (raw bytes, in the pieces given).
    async fn slave(mut s: DuplexStream, expect: Vec<u8>, reply: Vec<Vec<u8>>) {
        let mut req = vec![0u8; expect.len()];
        s.read_exact(&mut req).await.unwrap();
        assert_eq!(req, expect, "request bytes");
        for part in reply {
            s.write_all(&part).await.unwrap();
            tokio::task::yield_now().await;
        }
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest).await;
    }

    async fn run<T>(
        expect: Vec<u8>,
        reply: Vec<Vec<u8>>,
        client: impl AsyncFnOnce(&mut RtuLink<DuplexLine>) -> T,
    ) -> (T, Quiet) {
        let (mut l, b, quiet) = link();
        let dev = tokio::spawn(slave(b, expect, reply));
        let out = client(&mut l).await;
        drop(l);
        dev.await.unwrap();
        (out, quiet)
    }

    #[test]
    fn crc_matches_the_spec_example() {
        // "Modbus over Serial Line" V1.02, 6.2.2: 02 07 → CRC 0x1241, sent 41 12.
        assert_eq!(crc16(&[0x02, 0x07]), 0x1241);
        // Read one holding register of slave 1 at 0: 01 03 00 00 00 01 84 0A.
        assert_eq!(frame(1, &[3, 0, 0, 0, 1]), [1, 3, 0, 0, 0, 1, 0x84, 0x0A]);
    }

    #[tokio::test]
    async fn reads_registers_and_bits() {
        let (out, quiet) = run(
            frame(7, &[3, 0, 10, 0, 2]),
            vec![frame(7, &[3, 4, 0x12, 0x34, 0xAB, 0xCD])],
            async |l| l.read_holding(7, 10, 2).await,
        )
        .await;
        assert_eq!(out, Ok(vec![0x1234, 0xABCD]));
        assert_eq!(quiet.until(), None, "a proper reply asks for no quiet time");
        let f = frame(1, &[1, 2, 0b0000_0101, 0b0000_0010]);
        let (out, _) = run(
            frame(1, &[1, 0, 0, 0, 10]),
            vec![f[..2].to_vec(), f[2..5].to_vec(), f[5..].to_vec()],
            async |l| l.read_coils(1, 0, 10).await,
        )
        .await;
        let mut want = vec![false; 10];
        want[0] = true;
        want[2] = true;
        want[9] = true;
        assert_eq!(out, Ok(want));
    }

    #[test]
    fn the_count_must_be_exactly_the_one_asked_for() {
        let f = "read holding registers";
        assert_eq!(
            data_bytes(f, &[4, 1, 2, 3, 4], 2, "registers", 4),
            Ok(&[1u8, 2, 3, 4][..])
        );
        for (data, got) in [(&[2u8, 1, 2][..], 2), (&[6, 1, 2, 3, 4, 5, 6][..], 6)] {
            let e = data_bytes(f, data, 2, "registers", 4).unwrap_err();
            assert_eq!(
                e.to_string(),
                format!(
                    "bad reply: read holding registers: asked for 2 registers (4 data bytes), got {got} data bytes"
                )
            );
        }
        // A byte count that disagrees with the bytes that came.
        assert!(data_bytes(f, &[4, 1, 2], 2, "registers", 4).is_err());
        assert!(data_bytes(f, &[], 2, "registers", 4).is_err());
    }

    async fn read_error(unit: u8, cnt: u16, reply: Vec<Vec<u8>>) -> (ModbusError, Quiet) {
        let (out, quiet) = run(frame(unit, &[3, 0, 0, 0, cnt as u8]), reply, async |l| {
            l.read_holding(unit, 0, cnt).await
        })
        .await;
        (out.unwrap_err(), quiet)
    }

    async fn protocol_error(reply: Vec<u8>) -> String {
        let (e, quiet) = read_error(1, 2, vec![reply]).await;
        assert!(matches!(e, ModbusError::Protocol(_)), "{e:?}");
        assert!(e.drops_link());
        assert!(
            quiet.until().is_some(),
            "garbage asks for a quiet time: {e}"
        );
        e.to_string()
    }

    #[tokio::test]
    async fn replies_of_another_length_are_protocol_errors() {
        // Fewer registers than asked (tokio-modbus's debug_assert_eq! panicked).
        let e = protocol_error(frame(1, &[3, 2, 0, 1])).await;
        assert!(
            e.contains("asked for 2 registers (4 data bytes), got 2"),
            "{e}"
        );
        // More (tokio-modbus and the old length check passed them).
        let e = protocol_error(frame(1, &[3, 6, 0, 1, 0, 2, 0, 3])).await;
        assert!(
            e.contains("asked for 2 registers (4 data bytes), got 6"),
            "{e}"
        );
        // Bits: 10 coils take 2 bytes.
        for n in [1usize, 3] {
            let mut pdu = vec![1, n as u8];
            pdu.resize(2 + n, 0xFF);
            let (out, _) = run(
                frame(1, &[1, 0, 0, 0, 10]),
                vec![frame(1, &pdu)],
                async |l| l.read_coils(1, 0, 10).await,
            )
            .await;
            let e = out.unwrap_err().to_string();
            assert!(
                e.contains(&format!(
                    "asked for 10 bits (2 data bytes), got {n} data bytes"
                )),
                "{e}"
            );
        }
    }

    #[tokio::test]
    async fn mismatched_or_garbled_replies_are_protocol_errors() {
        let ok = [3, 4, 0, 1, 0, 2];
        // Another slave's reply (a late one, after a timeout).
        let e = protocol_error(frame(2, &ok)).await;
        assert!(e.contains("reply from slave 2, expected slave 1"), "{e}");
        // Another function.
        let e = protocol_error(frame(1, &[4, 4, 0, 1, 0, 2])).await;
        assert!(e.contains("function code 4, expected 3"), "{e}");
        // A bad CRC.
        let mut f = frame(1, &ok);
        f[4] ^= 0x10;
        let e = protocol_error(f).await;
        assert!(e.contains("bad CRC"), "{e}");
        // Garbage after the reply.
        let mut f = frame(1, &ok);
        f.extend_from_slice(&[0xDE, 0xAD]);
        let e = protocol_error(f).await;
        assert!(e.contains("2 bytes after the reply"), "{e}");
        // No function code a reply can have.
        let e = protocol_error(vec![1, 0x2A, 0, 0, 0]).await;
        assert!(e.contains("unknown function code 42"), "{e}");
    }

    #[tokio::test]
    async fn an_exception_is_the_device_answer() {
        let (e, quiet) = read_error(1, 1, vec![frame(1, &[0x83, 2])]).await;
        assert!(matches!(e, ModbusError::Exception { code: 2, .. }), "{e}");
        assert!(!e.drops_link());
        assert_eq!(quiet.until(), None);
    }

    #[tokio::test]
    async fn bytes_that_cannot_start_a_reply_are_skipped() {
        let mut f = vec![0x00, 0xFF];
        f.extend(frame(1, &[3, 2, 0, 9]));
        let (out, _) = run(frame(1, &[3, 0, 0, 0, 1]), vec![f], async |l| {
            l.read_holding(1, 0, 1).await
        })
        .await;
        assert_eq!(out, Ok(vec![9]));
    }

    #[tokio::test]
    async fn what_came_before_the_request_is_cleared() {
        let (mut l, mut b, _) = link();
        // A late reply (same slave, same function, same length) already
        // on the line when the next request goes out.
        b.write_all(&frame(1, &[3, 2, 0, 111])).await.unwrap();
        let dev = tokio::spawn(slave(
            b,
            frame(1, &[3, 0, 5, 0, 1]),
            vec![frame(1, &[3, 2, 0, 5])],
        ));
        assert_eq!(l.read_holding(1, 5, 1).await, Ok(vec![5]));
        drop(l);
        dev.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn an_abandoned_request_asks_for_a_quiet_time() {
        let (mut l, mut b, quiet) = link();
        let timeout = Duration::from_millis(400);
        let r = tokio::time::timeout(timeout, l.read_holding(1, 0, 2)).await;
        assert!(r.is_err(), "no reply: the caller's timeout");
        let now = Instant::now();
        // Half the wait, plus the 9-byte reply's time on the line.
        assert_eq!(quiet.until(), Some(now + timeout / 2 + CHAR * 9));
        // A shorter one later does not shorten it.
        quiet.hold_until(now);
        assert_eq!(quiet.until(), Some(now + timeout / 2 + CHAR * 9));
        let mut req = [0u8; 8];
        b.read_exact(&mut req).await.unwrap();
        assert_eq!(req.to_vec(), frame(1, &[3, 0, 0, 0, 2]));
    }

    #[test]
    fn quiet_time_is_half_the_wait_plus_the_reply_within_bounds() {
        let ms = Duration::from_millis;
        assert_eq!(quiet_time(ms(1000), ms(8)), ms(508));
        assert_eq!(quiet_time(ms(20), ms(1)), MIN_QUIET);
        assert_eq!(quiet_time(ms(10_000), ms(300)), MAX_QUIET);
    }

    #[tokio::test]
    async fn requests_no_frame_can_carry_are_refused_before_sending() {
        let (mut l, _b, quiet) = link();
        assert!(l.read_holding(1, 0, 126).await.is_err());
        assert!(l.read_coils(1, 0, 2001).await.is_err());
        assert!(l.read_input(1, 0, 0).await.is_err());
        assert!(l.write_registers(1, 0, vec![0; 124]).await.is_err());
        assert!(l.write_registers(1, 0, Vec::new()).await.is_err());
        assert_eq!(quiet.until(), None, "nothing was sent");
    }

    #[tokio::test]
    async fn writes_check_the_echo() {
        let req = frame(3, &[5, 0, 4, 0xFF, 0]);
        let (out, _) = run(req.clone(), vec![req], async |l| {
            l.write_coil(3, 4, true).await
        })
        .await;
        assert_eq!(out, Ok(()));
        let (out, _) = run(
            frame(3, &[6, 0, 4, 0x12, 0x34]),
            vec![frame(3, &[6, 0, 4, 0x12, 0x35])],
            async |l| l.write_register(3, 4, 0x1234).await,
        )
        .await;
        assert!(matches!(out, Err(ModbusError::Protocol(_))), "{out:?}");
        let (out, _) = run(
            frame(3, &[16, 0, 8, 0, 2, 4, 0, 1, 0, 2]),
            vec![frame(3, &[16, 0, 8, 0, 2])],
            async |l| l.write_registers(3, 8, vec![1, 2]).await,
        )
        .await;
        assert_eq!(out, Ok(()));
    }
}
