//! A simulated Modbus TCP device for the demo: four tables in memory,
//! served with tokio-modbus' server, changed by a scenario task.

use std::future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::net::TcpListener;
use tokio_modbus::server::tcp::{accept_tcp_connection, Server};
use tokio_modbus::{ExceptionCode, Request, Response};

/// The device's memory. Every table holds 256 entries.
#[derive(Debug)]
pub struct Tables {
    pub coils: Vec<bool>,
    pub discrete: Vec<bool>,
    pub holding: Vec<u16>,
    pub input: Vec<u16>,
}

impl Default for Tables {
    fn default() -> Self {
        Tables {
            coils: vec![false; 256],
            discrete: vec![false; 256],
            holding: vec![0; 256],
            input: vec![0; 256],
        }
    }
}

/// Shared handle to a simulated device's tables.
pub type SimDevice = Arc<Mutex<Tables>>;

#[derive(Clone)]
struct Service(SimDevice);

fn range<T: Clone>(v: &[T], addr: u16, n: u16) -> Result<Vec<T>, ExceptionCode> {
    let (a, n) = (addr as usize, n as usize);
    v.get(a..a + n)
        .map(|s| s.to_vec())
        .ok_or(ExceptionCode::IllegalDataAddress)
}

impl tokio_modbus::server::Service for Service {
    type Request = Request<'static>;
    type Response = Response;
    type Exception = ExceptionCode;
    type Future = future::Ready<Result<Response, ExceptionCode>>;

    fn call(&self, req: Request<'static>) -> Self::Future {
        let mut t = self.0.lock().expect("sim tables");
        let r = match req {
            Request::ReadCoils(a, n) => range(&t.coils, a, n).map(Response::ReadCoils),
            Request::ReadDiscreteInputs(a, n) => {
                range(&t.discrete, a, n).map(Response::ReadDiscreteInputs)
            }
            Request::ReadHoldingRegisters(a, n) => {
                range(&t.holding, a, n).map(Response::ReadHoldingRegisters)
            }
            Request::ReadInputRegisters(a, n) => {
                range(&t.input, a, n).map(Response::ReadInputRegisters)
            }
            Request::WriteSingleCoil(a, v) => match t.coils.get_mut(a as usize) {
                Some(c) => {
                    *c = v;
                    Ok(Response::WriteSingleCoil(a, v))
                }
                None => Err(ExceptionCode::IllegalDataAddress),
            },
            Request::WriteSingleRegister(a, v) => match t.holding.get_mut(a as usize) {
                Some(c) => {
                    *c = v;
                    Ok(Response::WriteSingleRegister(a, v))
                }
                None => Err(ExceptionCode::IllegalDataAddress),
            },
            Request::WriteMultipleCoils(a, vs) => {
                let end = a as usize + vs.len();
                if end > t.coils.len() {
                    Err(ExceptionCode::IllegalDataAddress)
                } else {
                    t.coils[a as usize..end].copy_from_slice(&vs);
                    Ok(Response::WriteMultipleCoils(a, vs.len() as u16))
                }
            }
            Request::WriteMultipleRegisters(a, vs) => {
                let end = a as usize + vs.len();
                if end > t.holding.len() {
                    Err(ExceptionCode::IllegalDataAddress)
                } else {
                    t.holding[a as usize..end].copy_from_slice(&vs);
                    Ok(Response::WriteMultipleRegisters(a, vs.len() as u16))
                }
            }
            _ => Err(ExceptionCode::IllegalFunction),
        };
        future::ready(r)
    }
}

/// Serve `device` on a free loopback port; returns the address.
pub async fn serve(device: SimDevice) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let server = Server::new(listener);
    tokio::spawn(async move {
        let on_connected = |stream, socket_addr| {
            let device = device.clone();
            async move {
                accept_tcp_connection(stream, socket_addr, move |_| {
                    Ok(Some(Service(device.clone())))
                })
            }
        };
        let on_error = |e| tracing::debug!(error = %e, "simulated device connection error");
        if let Err(e) = server.serve(&on_connected, on_error).await {
            tracing::warn!(error = %e, "simulated device stopped");
        }
    });
    Ok(addr)
}
