//! The pins themselves, behind a small trait so tests inject a fake; the
//! Raspberry Pi implementation uses `rppal` (cargo feature `gpio`).

use super::{GpioDeviceConfig, GpioError};

/// Open pins of one GPIO device. Levels are electrical (`true` = high).
pub trait Pins: Send {
    /// Read an input pin.
    fn read(&mut self, pin: u8) -> bool;
    /// Drive an output pin.
    fn write(&mut self, pin: u8, high: bool);
}

/// Opens a device's pins: inputs with the device's pull, outputs driven
/// to `initial` (their safe level).
pub trait Opener: Send + 'static {
    fn open(
        &mut self,
        cfg: &GpioDeviceConfig,
        inputs: &[u8],
        outputs: &[(u8, bool)],
    ) -> Result<Box<dyn Pins>, GpioError>;
}

/// Is there GPIO hardware this build can drive? (`check-config` and start.)
pub fn probe() -> Result<(), GpioError> {
    #[cfg(feature = "gpio")]
    {
        rppal::gpio::Gpio::new()
            .map(|_| ())
            .map_err(|e| GpioError::NoHardware(e.to_string()))
    }
    #[cfg(not(feature = "gpio"))]
    {
        Err(GpioError::NotBuilt)
    }
}

/// The Raspberry Pi's pins through `rppal`.
#[derive(Debug, Default)]
pub struct RppalOpener;

#[cfg(feature = "gpio")]
mod rpi {
    use super::super::Pull;
    use super::*;
    use rppal::gpio::{Gpio, InputPin, OutputPin};
    use std::collections::HashMap;

    struct RppalPins {
        inputs: HashMap<u8, InputPin>,
        outputs: HashMap<u8, OutputPin>,
    }

    impl Pins for RppalPins {
        fn read(&mut self, pin: u8) -> bool {
            self.inputs.get(&pin).is_some_and(|p| p.is_high())
        }
        fn write(&mut self, pin: u8, high: bool) {
            if let Some(p) = self.outputs.get_mut(&pin) {
                if high {
                    p.set_high();
                } else {
                    p.set_low();
                }
            }
        }
    }

    impl Opener for RppalOpener {
        fn open(
            &mut self,
            cfg: &GpioDeviceConfig,
            inputs: &[u8],
            outputs: &[(u8, bool)],
        ) -> Result<Box<dyn Pins>, GpioError> {
            let gpio = Gpio::new().map_err(|e| GpioError::NoHardware(e.to_string()))?;
            let get = |pin: u8| {
                gpio.get(pin).map_err(|e| GpioError::Pin {
                    pin,
                    message: e.to_string(),
                })
            };
            let mut pins = RppalPins {
                inputs: HashMap::new(),
                outputs: HashMap::new(),
            };
            for &pin in inputs {
                let p = get(pin)?;
                let p = match cfg.pull {
                    Pull::Up => p.into_input_pullup(),
                    Pull::Down => p.into_input_pulldown(),
                    Pull::None => p.into_input(),
                };
                pins.inputs.insert(pin, p);
            }
            for &(pin, initial) in outputs {
                let p = get(pin)?;
                let mut p = if initial {
                    p.into_output_high()
                } else {
                    p.into_output_low()
                };
                // The driver sets the safe level itself at shutdown; a pin
                // must not float back to input (a relay could chatter).
                p.set_reset_on_drop(false);
                pins.outputs.insert(pin, p);
            }
            Ok(Box::new(pins))
        }
    }
}

#[cfg(not(feature = "gpio"))]
impl Opener for RppalOpener {
    fn open(
        &mut self,
        _: &GpioDeviceConfig,
        _: &[u8],
        _: &[(u8, bool)],
    ) -> Result<Box<dyn Pins>, GpioError> {
        Err(GpioError::NotBuilt)
    }
}
