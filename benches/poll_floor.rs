//! The polling floor of scenario A: what the kernel and the runtime cost
//! for the bare Modbus traffic, with nothing else a gateway does.
//!
//! Run by `scripts/bench floor` in place of the gateway binary: it reads
//! the scenario's generated config (`poll_floor run --config FILE`), opens
//! one connection per device with the gateway's MBAP client, and every
//! second, on the same grid for all devices, reads what the gateway reads
//! (holding registers 0..R-1 and coil 0) with the same single-threaded
//! runtime. No decoding, no alarm engine, no journal, no uplink, no web
//! server. Its CPU seconds are the part of the gateway's figure that no
//! change to the gateway's own work can remove.

use estate_gateway::drivers::modbus::mbap::MbapLink;
use estate_gateway::drivers::modbus::transport::Transport as _;
use std::time::Duration;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let Some(path) = args
        .iter()
        .position(|a| a == "--config")
        .and_then(|i| args.get(i + 1))
    else {
        eprintln!("usage: poll_floor run --config FILE (a scripts/bench_scenario.py config)");
        std::process::exit(2);
    };
    let text = std::fs::read_to_string(path).expect("config readable");
    let cfg: toml::Value = toml::from_str(&text).expect("config parses");
    let holding = cfg["profiles"][0]["points"]
        .as_array()
        .expect("profile points")
        .iter()
        .filter(|p| p["register"].as_str() == Some("holding"))
        .count() as u16;
    let ports: Vec<u16> = cfg["devices"]
        .as_array()
        .expect("devices")
        .iter()
        .map(|d| d["modbus"]["port"].as_integer().expect("port") as u16)
        .collect();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let start = tokio::time::Instant::now() + Duration::from_secs(1);
        let mut tasks = Vec::new();
        for port in ports {
            tasks.push(tokio::spawn(async move {
                let mut tick = tokio::time::interval_at(start, Duration::from_secs(1));
                let mut link = None;
                loop {
                    tick.tick().await;
                    if link.is_none() {
                        match tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
                            Ok(s) => {
                                let _ = s.set_nodelay(true);
                                link = Some(MbapLink::new(s));
                            }
                            Err(_) => continue,
                        }
                    }
                    let Some(l) = link.as_mut() else { continue };
                    let ok = tokio::time::timeout(Duration::from_secs(1), async {
                        if holding > 0 {
                            l.read_holding(1, 0, holding).await?;
                        }
                        l.read_coils(1, 0, 1).await
                    })
                    .await;
                    if !matches!(ok, Ok(Ok(_))) {
                        link = None;
                    }
                }
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
    });
}
