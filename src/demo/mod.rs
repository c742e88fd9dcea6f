//! `estate-gateway demo`: the whole product on one machine, with no
//! hardware and no external services.
//!
//! It starts simulated field devices (a perimeter fence whose zones trip now
//! and then, a fire panel, an access-control panel, two HVAC units with
//! drifting temperatures) as Modbus TCP servers on loopback, an embedded
//! MQTT broker standing in for the central platform, and the gateway itself
//! with a journal in a temporary directory. A "platform" client prints what
//! arrives, and acknowledges the fire alarm through the command path, as a
//! control room would.

mod sim;

use crate::app::Gateway;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use sim::{SimDevice, Tables};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const SITE: &str = "demo-estate";
const GATEWAY: &str = "gw-demo";

/// Run the demo until Ctrl-C or for `duration_s` seconds.
pub async fn run(duration_s: Option<u64>) -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("estate-gateway-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let broker = start_broker()?;
    println!("estate-gateway demo");
    println!("  platform broker (embedded): mqtt://{broker}");

    let devices = Devices::start().await?;
    println!(
        "  simulated devices on loopback: fence-north, fire-panel-a, access-main, hvac-1, hvac-2"
    );
    let config_text = devices.config(broker, &dir);
    let config_path = dir.join("gateway.toml");
    std::fs::write(&config_path, &config_text)?;
    println!("  gateway config: {}", config_path.display());
    println!("  journal: {}\n", dir.join("journal").display());
    let cfg = crate::config::load(&config_path).map_err(|e| anyhow::anyhow!("demo config: {e}"))?;

    let platform = Platform::connect(broker).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let gateway = Gateway::start(cfg).await?;
    if let Some(addr) = gateway.web_addr {
        println!(
            "  web page: http://{addr}/  (first sign-in: the one-time setup token logged above)"
        );
        println!("  metrics: http://{addr}/metrics  health: http://{addr}/healthz\n");
    }
    println!("What the central platform receives (Ctrl-C to stop):\n");

    let scenario = tokio::spawn(devices.scenario(platform.client.clone()));
    let stop = async {
        match duration_s {
            Some(s) => tokio::time::sleep(Duration::from_secs(s)).await,
            None => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    };
    stop.await;
    println!("\nstopping…");
    scenario.abort();
    gateway.stop();
    gateway.wait().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// The embedded broker standing in for the platform's broker.
fn start_broker() -> anyhow::Result<SocketAddr> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let text = format!(
        r#"
id = 0
[router]
id = 0
max_connections = 64
max_outgoing_packet_count = 200
max_segment_size = 1048576
max_segment_count = 4

[v4.1]
name = "demo-platform"
listen = "127.0.0.1:{port}"
next_connection_delay_ms = 1
[v4.1.connections]
connection_timeout_ms = 60000
max_payload_size = 262144
max_inflight_count = 200
dynamic_filters = true
"#
    );
    let config: rumqttd::Config = toml::from_str(&text)?;
    std::thread::Builder::new()
        .name("demo-broker".into())
        .spawn(move || {
            let mut broker = rumqttd::Broker::new(config);
            if let Err(e) = broker.start() {
                eprintln!("demo broker stopped: {e}");
            }
        })?;
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    for _ in 0..100 {
        if std::net::TcpStream::connect(addr).is_ok() {
            return Ok(addr);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    anyhow::bail!("embedded broker did not start on {addr}")
}

struct Devices {
    fence: (SimDevice, SocketAddr),
    fire: (SimDevice, SocketAddr),
    access: (SimDevice, SocketAddr),
    hvac1: (SimDevice, SocketAddr),
    hvac2: (SimDevice, SocketAddr),
}

impl Devices {
    async fn start() -> anyhow::Result<Devices> {
        async fn one(init: impl FnOnce(&mut Tables)) -> anyhow::Result<(SimDevice, SocketAddr)> {
            let mut t = Tables::default();
            init(&mut t);
            let d: SimDevice = Arc::new(Mutex::new(t));
            let addr = sim::serve(d.clone()).await?;
            Ok((d, addr))
        }
        Ok(Devices {
            // Fence: coils 0–3 zone alarms, holding 0–3 pulse voltage (0.1 kV).
            fence: one(|t| t.holding[..4].fill(82)).await?,
            // Fire panel: discrete inputs 0–3 loop-1 zones, input 0 panel status.
            fire: one(|_| {}).await?,
            // Access panel: coils 0–1 door forced, 10–11 door-release outputs.
            access: one(|_| {}).await?,
            // HVAC: holding 0 supply temp (0.1 °C, i16), 1 return temp, coil 0 fan.
            hvac1: one(|t| {
                t.holding[0] = 180;
                t.holding[1] = 240;
                t.coils[0] = true;
            })
            .await?,
            hvac2: one(|t| {
                t.holding[0] = 190;
                t.holding[1] = 250;
                t.coils[0] = true;
            })
            .await?,
        })
    }

    fn config(&self, broker: SocketAddr, dir: &std::path::Path) -> String {
        let port = |d: &(SimDevice, SocketAddr)| d.1.port();
        format!(
            include_str!("demo.toml"),
            broker_port = broker.port(),
            journal = dir.join("journal").display(),
            fence = port(&self.fence),
            fire = port(&self.fire),
            access = port(&self.access),
            hvac1 = port(&self.hvac1),
            hvac2 = port(&self.hvac2),
        )
    }

    /// Make things happen: fence zones trip, a fire starts and is put out,
    /// a door is forced, temperatures drift.
    async fn scenario(self, platform: AsyncClient) {
        let mut tick: u64 = 0;
        let mut fence_trip: Option<(usize, u64)> = None;
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            tick += 1;
            // HVAC drift: a slow sine plus noise; hvac-2 overheats for a while.
            let phase = tick as f64 / 20.0;
            for (d, base, hot) in [(&self.hvac1, 180.0, 0.0), (&self.hvac2, 190.0, 1.0)] {
                let over = if hot > 0.0 && (40..70).contains(&(tick % 120)) {
                    110.0
                } else {
                    0.0
                };
                let temp = base + 15.0 * phase.sin() + fastrand::f64() * 3.0 + over;
                d.0.lock().unwrap().holding[0] = temp as i16 as u16;
            }
            // Fence: every ~15 s a random zone trips for 3 s, its voltage drops.
            match fence_trip {
                Some((zone, until)) if tick >= until => {
                    let mut t = self.fence.0.lock().unwrap();
                    t.coils[zone] = false;
                    t.holding[zone] = 82;
                    fence_trip = None;
                }
                None if tick % 15 == 7 => {
                    let zone = fastrand::usize(0..4);
                    let mut t = self.fence.0.lock().unwrap();
                    t.coils[zone] = true;
                    t.holding[zone] = 12;
                    fence_trip = Some((zone, tick + 3));
                }
                _ => {}
            }
            // Fire: zone 3 smoke at 20 s, gone at 30 s; the latched alarm is
            // acknowledged by the control room at 35 s.
            match tick % 90 {
                20 => self.fire.0.lock().unwrap().discrete[2] = true,
                30 => self.fire.0.lock().unwrap().discrete[2] = false,
                35 => {
                    let cmd = serde_json::json!({
                        "action": "ack_alarm",
                        "target": "fire-panel-a/zone-3",
                        "operator": "control-room/demo",
                        "comment": "false alarm: kitchen smoke",
                    });
                    let topic = format!("estate/v1/{SITE}/{GATEWAY}/cmd/demo-ack-{tick}");
                    println!(
                        "{} platform → gateway  ack_alarm fire-panel-a/zone-3",
                        clock()
                    );
                    let _ = platform
                        .publish(
                            topic,
                            QoS::AtLeastOnce,
                            false,
                            serde_json::to_vec(&cmd).unwrap(),
                        )
                        .await;
                }
                _ => {}
            }
            // Access: the villa front door is forced at 50 s for 4 s.
            match tick % 90 {
                50 => self.access.0.lock().unwrap().coils[1] = true,
                54 => self.access.0.lock().unwrap().coils[1] = false,
                _ => {}
            }
        }
    }
}

/// The platform's side: print what arrives.
struct Platform {
    client: AsyncClient,
}

impl Platform {
    async fn connect(broker: SocketAddr) -> anyhow::Result<Platform> {
        let mut opts = MqttOptions::new("demo-platform", broker.ip().to_string(), broker.port());
        opts.set_keep_alive(Duration::from_secs(5));
        let (client, mut eventloop) = AsyncClient::new(opts, 64);
        client
            .subscribe(format!("estate/v1/{SITE}/{GATEWAY}/#"), QoS::AtLeastOnce)
            .await?;
        tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::Publish(p))) => show(&p.topic, &p.payload),
                    Ok(_) => {}
                    Err(e) => {
                        tracing::debug!(error = %e, "demo platform connection");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                }
            }
        });
        Ok(Platform { client })
    }
}

fn clock() -> String {
    chrono::Local::now().format("%H:%M:%S").to_string()
}

/// One line per message, as a control-room operator would want it.
fn show(topic: &str, payload: &[u8]) {
    let sub = topic.splitn(5, '/').nth(4).unwrap_or(topic);
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(payload) else {
        println!("{} {sub}: (not JSON)", clock());
        return;
    };
    let s = |x: &serde_json::Value| x.as_str().unwrap_or("").to_string();
    match sub {
        "events" => {
            let kind = s(&v["kind"]);
            let seq = v["seq"].as_u64().unwrap_or(0);
            let prio = v["priority"].as_u64().unwrap_or(0);
            if let Some(a) = v.get("alarm") {
                println!(
                    "{} #{seq:<4} {kind:<19} P{prio} {:<10} {:<28} {:<16} {}  [{}]",
                    clock(),
                    s(&v["category"]),
                    s(&a["key"]),
                    s(&v["source"]["zone"]),
                    s(&a["message"]),
                    s(&a["state"]),
                );
            } else {
                let what = v["source"]["device"]
                    .as_str()
                    .map(str::to_string)
                    .or_else(|| v.get("detail").map(|d| d.to_string()))
                    .unwrap_or_default();
                println!("{} #{seq:<4} {kind:<19} P{prio} {what}", clock());
            }
        }
        "status" => println!("{} status: {}", clock(), s(&v["state"])),
        "heartbeat" => println!(
            "{} heartbeat: devices online {}, offline {}, alarms active {}, backlog {}",
            clock(),
            v["devices_online"],
            v["devices_offline"],
            v["alarms_active"],
            v["backlog"]
        ),
        "telemetry" => {
            let n = v["points"].as_array().map(|a| a.len()).unwrap_or(0);
            let temps: Vec<String> = v["points"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|p| p["point"] == "supply-temp")
                .map(|p| format!("{} {}°C", s(&p["device"]), p["value"]))
                .collect();
            if !temps.is_empty() {
                println!("{} telemetry: {n} values ({})", clock(), temps.join(", "));
            }
        }
        t if t.starts_with("cmd_result/") => println!(
            "{} gateway → platform  cmd_result ok={} {}",
            clock(),
            v["ok"],
            v["error"].as_str().unwrap_or("")
        ),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demo_config_is_valid() {
        let d = |p: u16| -> (SimDevice, SocketAddr) {
            (
                Arc::new(Mutex::new(Tables::default())),
                ([127, 0, 0, 1], p).into(),
            )
        };
        let devices = Devices {
            fence: d(1),
            fire: d(2),
            access: d(3),
            hvac1: d(4),
            hvac2: d(5),
        };
        let text = devices.config(
            ([127, 0, 0, 1], 1883).into(),
            std::path::Path::new("/tmp/x"),
        );
        let cfg = crate::config::load_str(&text, std::path::Path::new("demo.toml"))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(cfg.config.devices.len(), 5);
        assert!(cfg.warnings.is_empty());
    }
}
