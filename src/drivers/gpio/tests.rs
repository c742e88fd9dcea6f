//! The GPIO task over fake pins, in paused time.

use super::*;
use std::collections::HashMap;
use std::sync::Mutex;

/// Electrical levels of the fake board; shared with the test.
#[derive(Clone, Default)]
struct Board {
    levels: Arc<Mutex<HashMap<u8, bool>>>,
    /// Opens that fail before one succeeds.
    fail_opens: Arc<Mutex<u32>>,
}

impl Board {
    fn set(&self, pin: u8, high: bool) {
        self.levels.lock().unwrap().insert(pin, high);
    }
    fn get(&self, pin: u8) -> Option<bool> {
        self.levels.lock().unwrap().get(&pin).copied()
    }
}

struct FakePins(Board);

impl Pins for FakePins {
    fn read(&mut self, pin: u8) -> bool {
        // Pulled up: an open contact reads high.
        self.0.get(pin).unwrap_or(true)
    }
    fn write(&mut self, pin: u8, high: bool) {
        self.0.set(pin, high);
    }
}

impl Opener for Board {
    fn open(
        &mut self,
        _: &GpioDeviceConfig,
        _: &[u8],
        outputs: &[(u8, bool)],
    ) -> Result<Box<dyn Pins>, GpioError> {
        let mut fails = self.fail_opens.lock().unwrap();
        if *fails > 0 {
            *fails -= 1;
            return Err(GpioError::NoHardware("test".into()));
        }
        for &(pin, level) in outputs {
            self.set(pin, level);
        }
        Ok(Box::new(FakePins(self.clone())))
    }
}

fn cfg() -> GpioDeviceConfig {
    GpioDeviceConfig {
        pull: Pull::Up,
        inputs_active_low: true,
        outputs_active_low: false,
        debounce: Duration::from_millis(50),
        sample: Duration::from_millis(10),
    }
}

const TAMPER: PointIndex = 0;
const SIREN: PointIndex = 1;
const TAMPER_PIN: u8 = 17;
const SIREN_PIN: u8 = 27;

struct Rig {
    board: Board,
    bus: mpsc::Receiver<BusMessage>,
    writes: mpsc::Sender<WriteRequest>,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

fn rig(cfg: GpioDeviceConfig, fail_opens: u32) -> Rig {
    let board = Board::default();
    *board.fail_opens.lock().unwrap() = fail_opens;
    // Enclosure closed: the tamper switch holds the pin low.
    board.set(TAMPER_PIN, false);
    let (bus_tx, bus) = mpsc::channel(64);
    let (writes, rx) = mpsc::channel(4);
    let task = GpioTask::new(
        "gw-io".into(),
        cfg,
        vec![(TAMPER, TAMPER_PIN)],
        vec![(SIREN, SIREN_PIN)],
        Box::new(board.clone()),
        bus_tx,
        rx,
    );
    let stop = CancellationToken::new();
    let task = tokio::spawn(task.run(stop.clone()));
    Rig {
        board,
        bus,
        writes,
        stop,
        task,
    }
}

async fn next_readings(bus: &mut mpsc::Receiver<BusMessage>) -> Vec<(PointIndex, Value)> {
    loop {
        match bus.recv().await.expect("bus open") {
            BusMessage::Readings { readings, .. } => {
                return readings.iter().map(|r| (r.point, r.value)).collect()
            }
            BusMessage::DeviceStatus { .. }
            | BusMessage::Confirmed { .. }
            | BusMessage::Unreadable { .. }
            | BusMessage::Handover { .. } => continue,
        }
    }
}

async fn write(
    rig: &Rig,
    point: PointIndex,
    value: Value,
    pulse: Option<Duration>,
) -> Result<(), WriteError> {
    let (reply, rx) = tokio::sync::oneshot::channel();
    rig.writes
        .send(WriteRequest {
            point,
            value,
            pulse,
            reply,
        })
        .await
        .unwrap();
    rx.await.unwrap()
}

#[tokio::test(start_paused = true)]
async fn inputs_are_debounced_points() {
    let mut r = rig(cfg(), 0);
    // Outputs start inactive and are reported.
    assert_eq!(
        next_readings(&mut r.bus).await,
        vec![(SIREN, Value::Bool(false))]
    );
    assert_eq!(r.board.get(SIREN_PIN), Some(false));
    // The closed switch (pin low, active low) reads true once debounced.
    assert_eq!(
        next_readings(&mut r.bus).await,
        vec![(TAMPER, Value::Bool(true))]
    );
    // A 20 ms glitch is not reported.
    r.board.set(TAMPER_PIN, true);
    tokio::time::sleep(Duration::from_millis(20)).await;
    r.board.set(TAMPER_PIN, false);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(r.bus.try_recv().is_err(), "glitch reported");
    // The enclosure opens: reported after the debounce time.
    let opened = tokio::time::Instant::now();
    r.board.set(TAMPER_PIN, true);
    assert_eq!(
        next_readings(&mut r.bus).await,
        vec![(TAMPER, Value::Bool(false))]
    );
    let took = opened.elapsed();
    assert!(
        took >= Duration::from_millis(50) && took <= Duration::from_millis(80),
        "{took:?}"
    );
    r.stop.cancel();
    r.task.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn outputs_are_written_pulsed_and_safe_at_shutdown() {
    let mut r = rig(cfg(), 0);
    next_readings(&mut r.bus).await;
    next_readings(&mut r.bus).await;

    write(&r, SIREN, Value::Bool(true), None).await.unwrap();
    assert_eq!(r.board.get(SIREN_PIN), Some(true));
    assert_eq!(
        next_readings(&mut r.bus).await,
        vec![(SIREN, Value::Bool(true))]
    );

    // Inputs cannot be written; values must be bools.
    assert_eq!(
        write(&r, TAMPER, Value::Bool(true), None).await,
        Err(WriteError::NotWritable)
    );
    assert!(matches!(
        write(&r, SIREN, Value::Float(0.5), None).await,
        Err(WriteError::BadValue(_))
    ));

    // A 5 s pulse off, then back on.
    write(&r, SIREN, Value::Bool(false), Some(Duration::from_secs(5)))
        .await
        .unwrap();
    assert_eq!(r.board.get(SIREN_PIN), Some(false));
    assert_eq!(
        next_readings(&mut r.bus).await,
        vec![(SIREN, Value::Bool(false))]
    );
    let t = tokio::time::Instant::now();
    assert_eq!(
        next_readings(&mut r.bus).await,
        vec![(SIREN, Value::Bool(true))]
    );
    assert!(t.elapsed() >= Duration::from_secs(5));
    assert_eq!(r.board.get(SIREN_PIN), Some(true));

    // Shutdown: the siren goes off.
    r.stop.cancel();
    r.task.await.unwrap();
    assert_eq!(r.board.get(SIREN_PIN), Some(false));
}

#[tokio::test(start_paused = true)]
async fn inverted_outputs_rest_high() {
    let mut c = cfg();
    c.outputs_active_low = true;
    let mut r = rig(c, 0);
    next_readings(&mut r.bus).await;
    assert_eq!(r.board.get(SIREN_PIN), Some(true), "inactive = high");
    write(&r, SIREN, Value::Bool(true), None).await.unwrap();
    assert_eq!(r.board.get(SIREN_PIN), Some(false));
    r.stop.cancel();
    r.task.await.unwrap();
    assert_eq!(r.board.get(SIREN_PIN), Some(true));
}

#[tokio::test(start_paused = true)]
async fn pins_that_cannot_open_make_the_device_offline_until_they_do() {
    let mut r = rig(cfg(), 2);
    match r.bus.recv().await.unwrap() {
        BusMessage::DeviceStatus { online, reason, .. } => {
            assert!(!online);
            assert!(reason.unwrap().contains("no Raspberry Pi GPIO"));
        }
        m => panic!("{m:?}"),
    }
    match r.bus.recv().await.unwrap() {
        BusMessage::DeviceStatus { online, .. } => assert!(online),
        m => panic!("{m:?}"),
    }
    assert_eq!(
        next_readings(&mut r.bus).await,
        vec![(SIREN, Value::Bool(false))]
    );
    r.stop.cancel();
    r.task.await.unwrap();
}

#[test]
fn config_problems() {
    let text = r#"
[site]
id = "s"
gateway = "g"
[uplink]
host = "localhost"
[[devices]]
id = "gw-io"
gpio = { debounce_s = 0.05 }
[[devices.points]]
id = "tamper"
register = "discrete_input"
address = 17
writable = true
[[devices.points]]
id = "siren"
register = "coil"
address = 17
[[devices.points]]
id = "level"
register = "holding"
type = "u16"
address = 40
"#;
    let errors = crate::config::load_str(text, std::path::Path::new("gw.toml"))
        .unwrap_err()
        .to_string();
    for needle in [
        "devices[0].points[0].writable: input pins are read-only",
        "devices[0].points[1].address: GPIO 17 is already used by points[0]",
        "devices[0].points[2].register: a GPIO point needs `register`",
        "devices[0].points[2].type: GPIO points are `bool`",
        "devices[0].points[2].address: GPIO 40 does not exist",
    ] {
        assert!(errors.contains(needle), "{needle:?} not in:\n{errors}");
    }
    // This machine (and CI) has no Raspberry Pi GPIO, or the build lacks it.
    let no_gpio = if cfg!(feature = "gpio") {
        "devices[0].gpio: no Raspberry Pi GPIO on this machine"
    } else {
        "devices[0].gpio: estate-gateway was built without GPIO support"
    };
    if hw::probe().is_err() {
        assert!(errors.contains(no_gpio), "{no_gpio:?} not in:\n{errors}");
    }
}
