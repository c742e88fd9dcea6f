//! Modbus TCP client framing (MBAP, "Modbus Messaging on TCP/IP
//! Implementation Guide" V1.0b), one request at a time on a connection.
//!
//! TCP links use this instead of tokio-modbus's client because that client
//! holds two 8 KiB frame buffers per connection
//! (tokio-util's `Framed` defaults, which its API does not let us size) and
//! those end up resident: data moves through the whole buffer as frames
//! are consumed. A gateway polling 200 TCP devices spent 3.2 MiB on them.
//! A link here holds one 260-byte frame buffer, the largest MBAP frame.
//!
//! Every reply is checked against its request (transaction id, protocol
//! id, length, unit id, function code, byte count, echoed write) and any
//! mismatch is a [`ModbusError::Protocol`]: the endpoint then drops the
//! link, since a stray or late frame would be taken for the next reply.
//! Bytes beyond the reply (a device answering twice, garbage) are a
//! protocol error too, for the same reason. No timeouts here: the endpoint
//! wraps every call (see [`super::transport`]).

use super::transport::{
    io_error, protocol, read_pdu, unpack_bits, unpack_words, ModbusError, PduLink,
};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio_modbus::ExceptionCode;

/// MBAP header: transaction id, protocol id, length, unit id.
const HEADER: usize = 7;
/// The largest frame: header + 253-byte PDU.
const MAX_FRAME: usize = HEADER + 253;

/// A Modbus TCP connection (any byte stream; a `TcpStream` in service).
pub struct MbapLink<S> {
    stream: S,
    /// Transaction id of the last request.
    tid: u16,
    /// The request being sent, then the reply being read.
    frame: Box<[u8; MAX_FRAME]>,
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> MbapLink<S> {
    pub fn new(stream: S) -> MbapLink<S> {
        MbapLink {
            stream,
            tid: 0,
            frame: Box::new([0; MAX_FRAME]),
        }
    }

    /// Send `pdu` (function code and data) to `unit`; the reply's PDU data
    /// after its function code, or the device's exception.
    async fn call(
        &mut self,
        function: &'static str,
        unit: u8,
        pdu: &[u8],
    ) -> Result<&[u8], ModbusError> {
        let fc = pdu[0];
        self.tid = self.tid.wrapping_add(1);
        let n = HEADER + pdu.len();
        let f = &mut self.frame;
        f[0..2].copy_from_slice(&self.tid.to_be_bytes());
        f[2..4].copy_from_slice(&[0, 0]);
        f[4..6].copy_from_slice(&(pdu.len() as u16 + 1).to_be_bytes());
        f[6] = unit;
        f[HEADER..n].copy_from_slice(pdu);
        self.stream.write_all(&f[..n]).await.map_err(io_error)?;

        let total = self.read_reply().await?;
        let f = &self.frame[..total];
        let tid = u16::from_be_bytes([f[0], f[1]]);
        if tid != self.tid {
            return Err(protocol(format!(
                "reply to transaction {tid}, expected {}",
                self.tid
            )));
        }
        if f[6] != unit {
            return Err(protocol(format!(
                "reply from unit {}, expected {unit}",
                f[6]
            )));
        }
        let body = &f[HEADER..];
        match body[0] {
            c if c == fc => Ok(&body[1..]),
            c if c == fc | 0x80 => match body.get(1) {
                Some(&code) if body.len() == 2 => {
                    Err(ModbusError::exception(function, ExceptionCode::new(code)))
                }
                _ => Err(protocol("malformed exception reply".into())),
            },
            c => Err(protocol(format!(
                "reply has function code {c}, expected {fc}"
            ))),
        }
    }

    /// Read one reply frame into `self.frame`; its length.
    async fn read_reply(&mut self) -> Result<usize, ModbusError> {
        let mut have = 0;
        let mut total = HEADER;
        while have < total {
            let n = self
                .stream
                .read(&mut self.frame[have..])
                .await
                .map_err(io_error)?;
            if n == 0 {
                return Err(ModbusError::Io("connection closed by the device".into()));
            }
            have += n;
            if total == HEADER && have >= HEADER {
                let f = &self.frame;
                let proto = u16::from_be_bytes([f[2], f[3]]);
                if proto != 0 {
                    return Err(protocol(format!("protocol id {proto}, expected 0")));
                }
                let len = u16::from_be_bytes([f[4], f[5]]) as usize;
                // Unit id plus at least a function code and one byte.
                if !(3..=MAX_FRAME - 6).contains(&len) {
                    return Err(protocol(format!("frame length {len} out of range")));
                }
                total = 6 + len;
            }
        }
        if have > total {
            return Err(protocol(format!("{} bytes after the reply", have - total)));
        }
        Ok(total)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> PduLink for MbapLink<S> {
    async fn read_bits(
        &mut self,
        fc: u8,
        function: &'static str,
        unit: u8,
        addr: u16,
        cnt: u16,
    ) -> Result<Vec<bool>, ModbusError> {
        let pdu = read_pdu(fc, addr, cnt)?;
        let data = self.call(function, unit, &pdu).await?;
        unpack_bits(function, data, cnt)
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
        let data = self.call(function, unit, &pdu).await?;
        unpack_words(function, data, cnt)
    }

    /// A write whose reply echoes the request's first four data bytes.
    async fn write_echoed(
        &mut self,
        function: &'static str,
        unit: u8,
        pdu: &[u8],
    ) -> Result<(), ModbusError> {
        let want: [u8; 4] = [pdu[1], pdu[2], pdu[3], pdu[4]];
        let data = self.call(function, unit, pdu).await?;
        if data == want {
            Ok(())
        } else {
            Err(protocol(format!(
                "{function}: reply does not echo the request"
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::drivers::modbus::transport::Transport as _;
    use tokio::io::{duplex, DuplexStream};

    /// A device on the other end of an in-memory stream: reads one request,
    /// checks it, answers with `reply(request)` (raw bytes, split as given).
    async fn device(
        mut s: DuplexStream,
        expect: Vec<u8>,
        reply: impl FnOnce(&[u8]) -> Vec<Vec<u8>> + Send + 'static,
    ) {
        let mut req = vec![0u8; expect.len()];
        s.read_exact(&mut req).await.unwrap();
        // Transaction id is the client's business; the rest must match.
        assert_eq!(&req[2..], &expect[2..], "request bytes");
        for part in reply(&req) {
            s.write_all(&part).await.unwrap();
            s.flush().await.unwrap();
            tokio::task::yield_now().await;
        }
        // Keep the stream open until the client is done.
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest).await;
    }

    fn frame(tid: &[u8], unit: u8, pdu: &[u8]) -> Vec<u8> {
        let mut f = vec![tid[0], tid[1], 0, 0];
        f.extend_from_slice(&(pdu.len() as u16 + 1).to_be_bytes());
        f.push(unit);
        f.extend_from_slice(pdu);
        f
    }

    async fn run<T>(
        expect: Vec<u8>,
        reply: impl FnOnce(&[u8]) -> Vec<Vec<u8>> + Send + 'static,
        client: impl AsyncFnOnce(&mut MbapLink<DuplexStream>) -> T,
    ) -> T {
        let (a, b) = duplex(1024);
        let dev = tokio::spawn(device(b, expect, reply));
        let mut link = MbapLink::new(a);
        let out = client(&mut link).await;
        drop(link);
        dev.await.unwrap();
        out
    }

    #[tokio::test]
    async fn reads_holding_registers() {
        let req = frame(&[0, 1], 7, &[3, 0, 10, 0, 2]);
        let out = run(
            req,
            |r| vec![frame(&r[0..2], 7, &[3, 4, 0x12, 0x34, 0xAB, 0xCD])],
            async |l| l.read_holding(7, 10, 2).await,
        )
        .await;
        assert_eq!(out, Ok(vec![0x1234, 0xABCD]));
    }

    #[tokio::test]
    async fn reads_coils_lsb_first_from_a_reply_split_in_pieces() {
        let req = frame(&[0, 1], 1, &[1, 0, 0, 0, 10]);
        let out = run(
            req,
            |r| {
                let f = frame(&r[0..2], 1, &[1, 2, 0b0000_0101, 0b0000_0010]);
                vec![f[..3].to_vec(), f[3..8].to_vec(), f[8..].to_vec()]
            },
            async |l| l.read_coils(1, 0, 10).await,
        )
        .await;
        let mut want = vec![false; 10];
        want[0] = true;
        want[2] = true;
        want[9] = true;
        assert_eq!(out, Ok(want));
    }

    #[tokio::test]
    async fn an_exception_is_the_device_answer_not_a_broken_link() {
        let req = frame(&[0, 1], 1, &[4, 0, 0, 0, 1]);
        let out = run(
            req,
            |r| vec![frame(&r[0..2], 1, &[0x84, 2])],
            async |l| l.read_input(1, 0, 1).await,
        )
        .await;
        let e = out.unwrap_err();
        assert!(matches!(e, ModbusError::Exception { code: 2, .. }), "{e}");
        assert!(!e.drops_link());
    }

    async fn protocol_error(reply: Vec<Vec<u8>>) -> String {
        let req = frame(&[0, 1], 1, &[3, 0, 0, 0, 1]);
        let out = run(req, move |_| reply, async |l| l.read_holding(1, 0, 1).await).await;
        match out {
            Err(e @ ModbusError::Protocol(_)) => {
                assert!(e.drops_link());
                e.to_string()
            }
            other => panic!("expected a protocol error, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn mismatched_replies_are_protocol_errors() {
        let ok = [3, 2, 0, 1];
        // Another transaction's reply (a late one, after a timeout).
        let e = protocol_error(vec![frame(&[0, 9], 1, &ok)]).await;
        assert!(e.contains("transaction 9"), "{e}");
        // Another unit.
        let e = protocol_error(vec![frame(&[0, 1], 2, &ok)]).await;
        assert!(e.contains("unit 2"), "{e}");
        // Another function.
        let e = protocol_error(vec![frame(&[0, 1], 1, &[4, 2, 0, 1])]).await;
        assert!(e.contains("function code 4"), "{e}");
        // Wrong byte count.
        let e = protocol_error(vec![frame(&[0, 1], 1, &[3, 4, 0, 1, 0, 2])]).await;
        assert!(e.contains("(2 data bytes), got"), "{e}");
        // Not Modbus (protocol id).
        let mut f = frame(&[0, 1], 1, &ok);
        f[3] = 1;
        let e = protocol_error(vec![f]).await;
        assert!(e.contains("protocol id 1"), "{e}");
        // A length no frame can have.
        let mut f = frame(&[0, 1], 1, &ok);
        f[4..6].copy_from_slice(&600u16.to_be_bytes());
        let e = protocol_error(vec![f]).await;
        assert!(e.contains("length 600"), "{e}");
        // Garbage after the reply.
        let mut f = frame(&[0, 1], 1, &ok);
        f.extend_from_slice(&[0xDE, 0xAD]);
        let e = protocol_error(vec![f]).await;
        assert!(e.contains("2 bytes after"), "{e}");
        // A malformed exception.
        let e = protocol_error(vec![frame(&[0, 1], 1, &[0x83, 2, 9])]).await;
        assert!(e.contains("malformed exception"), "{e}");
    }

    #[tokio::test]
    async fn a_device_hanging_up_mid_reply_is_an_io_error() {
        let req = frame(&[0, 1], 1, &[3, 0, 0, 0, 1]);
        let (a, mut b) = duplex(1024);
        let dev = tokio::spawn(async move {
            let mut r = vec![0u8; req.len()];
            b.read_exact(&mut r).await.unwrap();
            b.write_all(&frame(&r[0..2], 1, &[3, 2, 0, 1])[..5])
                .await
                .unwrap();
        });
        let mut link = MbapLink::new(a);
        let e = link.read_holding(1, 0, 1).await.unwrap_err();
        dev.await.unwrap();
        assert!(matches!(e, ModbusError::Io(_)), "{e}");
        assert!(e.to_string().contains("closed"), "{e}");
    }

    #[tokio::test]
    async fn writes_check_the_echo() {
        let req = frame(&[0, 1], 3, &[5, 0, 4, 0xFF, 0]);
        let out = run(
            req,
            |r| vec![r.to_vec()],
            async |l| l.write_coil(3, 4, true).await,
        )
        .await;
        assert_eq!(out, Ok(()));
        let req = frame(&[0, 1], 3, &[6, 0, 4, 0x12, 0x34]);
        let out = run(
            req,
            |r| vec![frame(&r[0..2], 3, &[6, 0, 4, 0x12, 0x35])],
            async |l| l.write_register(3, 4, 0x1234).await,
        )
        .await;
        assert!(matches!(out, Err(ModbusError::Protocol(_))), "{out:?}");
        let req = frame(&[0, 1], 3, &[16, 0, 8, 0, 2, 4, 0, 1, 0, 2]);
        let out = run(
            req,
            |r| vec![frame(&r[0..2], 3, &[16, 0, 8, 0, 2])],
            async |l| l.write_registers(3, 8, vec![1, 2]).await,
        )
        .await;
        assert_eq!(out, Ok(()));
    }

    #[tokio::test]
    async fn transaction_ids_advance_and_wrap() {
        let (a, mut b) = duplex(4096);
        let mut link = MbapLink::new(a);
        link.tid = u16::MAX - 1;
        let dev = tokio::spawn(async move {
            let mut seen = Vec::new();
            for _ in 0..3 {
                let mut r = [0u8; 12];
                b.read_exact(&mut r).await.unwrap();
                seen.push(u16::from_be_bytes([r[0], r[1]]));
                b.write_all(&frame(&r[0..2], 1, &[3, 2, 0, 7]))
                    .await
                    .unwrap();
            }
            seen
        });
        for _ in 0..3 {
            assert_eq!(link.read_holding(1, 0, 1).await, Ok(vec![7]));
        }
        assert_eq!(dev.await.unwrap(), vec![u16::MAX, 0, 1]);
    }

    #[tokio::test]
    async fn requests_no_frame_can_carry_are_refused_before_sending() {
        let (a, _b) = duplex(64);
        let mut link = MbapLink::new(a);
        assert!(link.read_holding(1, 0, 126).await.is_err());
        assert!(link.read_coils(1, 0, 2001).await.is_err());
        assert!(link.read_input(1, 0, 0).await.is_err());
        assert!(link.write_registers(1, 0, vec![0; 124]).await.is_err());
        assert!(link.write_registers(1, 0, Vec::new()).await.is_err());
        assert_eq!(link.tid, 0, "nothing was sent");
    }
}
