use super::*;
use std::path::Path;

const MINIMAL: &str = r#"
[site]
id = "palm-bay"
gateway = "gw-north-1"

[uplink]
host = "127.0.0.1"

[[devices]]
id = "fire-panel-a"
category = "fire"
life_safety = true
[devices.modbus]
host = "127.0.0.1"
port = 5020

[[devices.points]]
id = "zone-3"
register = "coil"
address = 3

[[alarms]]
point = "fire-panel-a/zone-3"
equals = true
priority = 1
message = "Smoke detector zone 3"
"#;

fn load(s: &str) -> Result<LoadedConfig, ConfigErrors> {
    load_str(s, Path::new("gw.toml"))
}

#[test]
fn minimal_config_loads() {
    let c = load(MINIMAL).unwrap();
    assert_eq!(c.points.len(), 1);
    assert_eq!(c.points.find("fire-panel-a/zone-3"), Some(0));
    assert_eq!(c.config.uplink.port(), 1883);
    assert!(c.warnings.is_empty());
}

#[test]
fn unknown_keys_are_errors_with_lines() {
    let text = MINIMAL
        .replace("address = 3", "address = 3\nadress = 4")
        .replace("[uplink]\nhost", "[uplink]\nhots = \"x\"\nhost");
    let errs = load(&text).unwrap_err().0;
    assert_eq!(errs.len(), 2, "{errs:?}");
    let e = errs
        .iter()
        .find(|e| e.key == "devices[0].points[0].adress")
        .unwrap();
    let line = text.lines().position(|l| l.starts_with("adress")).unwrap() + 1;
    assert_eq!(e.line, Some(line));
    assert!(errs.iter().any(|e| e.key == "uplink.hots"));
    assert!(errs[0].to_string().starts_with("gw.toml:"));
}

#[test]
fn type_errors_name_the_line() {
    let text = MINIMAL.replace("port = 5020", "port = \"five\"");
    let errs = load(&text).unwrap_err().0;
    assert_eq!(errs.len(), 1);
    let line = text.lines().position(|l| l.contains("\"five\"")).unwrap() + 1;
    assert_eq!(errs[0].line, Some(line), "{errs:?}");
    assert_eq!(errs[0].key, "devices[0].modbus.port", "{errs:?}");
}

#[test]
fn validation_collects_every_problem() {
    let text = MINIMAL
        .replace("id = \"palm-bay\"", "id = \"Palm Bay\"")
        .replace("priority = 1", "priority = 1\nhigh = 3.0")
        .replace(
            "point = \"fire-panel-a/zone-3\"",
            "point = \"fire-panel-a/zone-9\"",
        )
        .replace("port = 5020", "port = 5020\nbus = \"rs485-1\"");
    let errs = load(&text).unwrap_err().0;
    let keys: Vec<&str> = errs.iter().map(|e| e.key.as_str()).collect();
    assert!(keys.contains(&"site.id"), "{keys:?}");
    assert!(keys.contains(&"alarms[0].point"), "{keys:?}");
    assert!(keys.contains(&"devices[0].modbus.bus"), "{keys:?}");
    for e in &errs {
        assert!(e.line.is_some(), "no line for {e}");
    }
}

#[test]
fn rules_no_value_of_the_point_can_meet_are_errors() {
    let with = |point_extra: &str, rule: &str| {
        let text = MINIMAL.replace(
            "[[alarms]]",
            &format!(
                "[[devices.points]]\nid = \"status\"\nregister = \"holding\"\naddress = 0\n\
                 type = \"u16\"\n{point_extra}\n[[alarms]]\npoint = \"fire-panel-a/status\"\n\
                 {rule}\npriority = 3\nmessage = \"Panel fault\"\n\n[[alarms]]"
            ),
        );
        load(&text).err().map(|e| {
            let found: Vec<_> =
                e.0.iter()
                    .map(|p| (p.key.clone(), p.message.clone()))
                    .collect();
            found
        })
    };
    for rule in [
        "equals = 1.5",
        "equals = -4",
        "equals = 65536",
        "high = 65535",
        "low = 0",
    ] {
        let errs = with("", rule).unwrap_or_else(|| panic!("{rule} accepted"));
        let key = format!("alarms[0].{}", rule.split(' ').next().unwrap());
        assert!(
            errs.iter()
                .any(|(k, m)| *k == key && m.contains("never met") && m.contains("0 to 65535")),
            "{rule}: {errs:?}"
        );
    }
    for rule in [
        "equals = 3",
        "equals = 65535",
        "high = 65534.5",
        "low = 0.5",
    ] {
        assert_eq!(with("", rule), None, "{rule}");
    }
    // Scaled to tenths: 0 to 6553.5.
    assert_eq!(
        with("scale = 0.1", "equals = 1.5"),
        None,
        "a scaled u16 can read 1.5"
    );
    assert!(
        with("scale = 0.1", "high = 6553.5").is_some(),
        "6553.5 is the most a scaled u16 reads"
    );
    assert_eq!(with("scale = 0.1", "high = 6553.4"), None);
}

#[test]
fn syntax_error_has_line() {
    let errs = load("[site]\nid = \"a\"\ngateway = \n").unwrap_err().0;
    assert_eq!(errs[0].line, Some(3), "{errs:?}");
}

#[test]
fn long_keepalive_warns() {
    let c = load(&MINIMAL.replace("[uplink]\n", "[uplink]\nkeepalive_s = 30\n")).unwrap();
    assert_eq!(c.warnings.len(), 1);
    assert_eq!(c.warnings[0].key, "uplink.keepalive_s");
}

#[test]
fn a_heartbeat_under_a_second_is_refused() {
    let errs = load(&MINIMAL.replace("[uplink]\n", "[uplink]\nheartbeat_s = 0.2\n"))
        .unwrap_err()
        .0;
    assert_eq!(errs[0].key, "uplink.heartbeat_s", "{errs:?}");
    assert!(errs[0].message.contains("at least 1"), "{errs:?}");
    assert!(load(&MINIMAL.replace("[uplink]\n", "[uplink]\nheartbeat_s = 1\n")).is_ok());
}

#[test]
fn example_config_is_valid() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/example.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    // The example's secrets and certificates live in /etc on a real gateway:
    // missing files are the only problems allowed here. Its GPIO is on a
    // Raspberry Pi: checked for any machine, missing GPIO is a warning.
    let no_gpio = |p: &ConfigProblem| p.key == "devices[7].gpio" && p.message.contains("GPIO");
    let warnings = match load_str_for(&text, &path, Target::AnyMachine) {
        Ok(c) => c.warnings,
        Err(e) => {
            assert_eq!(e.checked(), Checked::Fully, "{e}");
            for p in &e.0 {
                assert!(
                    (p.key.starts_with("uplink.tls")
                        || p.key == "uplink.password"
                        || p.key == "web.metrics_token"
                        || p.key.starts_with("site_broker.embedded.users")
                        || p.key.starts_with("push.channels")
                        || p.key.starts_with("cameras["))
                        && (p.message.contains("cannot read")
                            || p.message.contains("No such file")),
                    "config/example.toml: {p}"
                );
            }
            e.warnings().to_vec()
        }
    };
    // Its second camera's password comes from the service's environment.
    let env_unset = |p: &ConfigProblem| {
        p.key == "cameras[1].password" && p.message.contains("CAM_NORTH_WALL_PASSWORD")
    };
    for w in &warnings {
        assert!(
            no_gpio(w) || env_unset(w),
            "config/example.toml: warning {w}"
        );
    }
    if crate::drivers::gpio::hw::probe().is_err() {
        let gpio = warnings.iter().filter(|w| no_gpio(w)).count();
        assert_eq!(gpio, 1, "{warnings:?}");
        // To run here, it is refused.
        let e = load_str(&text, &path).unwrap_err();
        assert_eq!(e.0.iter().filter(|p| no_gpio(p)).count(), 1, "{e}");
    }
}

/// Every key used by the shipped configs is in the config reference.
#[test]
fn reference_documents_every_key_in_use() {
    fn keys(v: &toml::Value, out: &mut std::collections::BTreeSet<String>) {
        match v {
            toml::Value::Table(t) => {
                for (k, v) in t {
                    out.insert(k.clone());
                    keys(v, out);
                }
            }
            toml::Value::Array(a) => a.iter().for_each(|v| keys(v, out)),
            _ => {}
        }
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let doc = std::fs::read_to_string(root.join("docs/configuration.md")).unwrap();
    let mut used = std::collections::BTreeSet::new();
    for f in ["config/example.toml", "src/demo/demo.toml"] {
        let text = std::fs::read_to_string(root.join(f)).unwrap();
        // The demo's template has `{placeholders}` for values.
        let text = if f.ends_with("demo.toml") {
            // Replace each `{placeholder}` with a number.
            let mut out = String::new();
            let mut rest = text.as_str();
            while let Some(i) = rest.find('{') {
                let j = rest[i..].find('}').unwrap() + i;
                out.push_str(&rest[..i]);
                out.push('1');
                rest = &rest[j + 1..];
            }
            out.push_str(rest);
            out.replace("path = 1", "path = \"x\"")
        } else {
            text
        };
        keys(
            &toml::Value::Table(toml::from_str(&text).unwrap()),
            &mut used,
        );
    }
    let missing: Vec<_> = used
        .iter()
        .filter(|k| {
            !doc.contains(&format!("`{k}`"))
                && !doc.contains(&format!("[{k}]"))
                && !doc.contains(&format!(".{k}]"))
        })
        .collect();
    assert!(
        missing.is_empty(),
        "keys missing from docs/configuration.md: {missing:?}"
    );
}

#[test]
fn unplannable_device_is_a_config_error() {
    let text = MINIMAL
        .replace("port = 5020", "port = 5020\nmax_registers_per_read = 1")
        .replace(
            "[[alarms]]",
            "[[devices.points]]\nid = \"energy\"\nregister = \"holding\"\naddress = 10\ntype = \"u32\"\n\n[[alarms]]",
        );
    let errs = load(&text).unwrap_err().0;
    assert!(
        errs.iter()
            .any(|e| e.key == "devices[0].modbus" && e.message.contains("cannot plan")),
        "{errs:?}"
    );
}

const PROFILED: &str = r#"
[site]
id = "palm-bay"
gateway = "gw-north-1"

[uplink]
host = "127.0.0.1"

[[profiles]]
id = "ahu-v2"
name = "Air handler, model 2"
[[profiles.points]]
id = "supply-temp"
register = "holding"
address = 0
type = "i16"
scale = 0.1
[[profiles.points]]
id = "fan-run"
register = "coil"
address = 0

[[devices]]
id = "hvac-1"
profile = "ahu-v2"
[devices.modbus]
host = "127.0.0.1"
[[devices.points]]
id = "filter-dirty"
register = "discrete_input"
address = 4

[[devices]]
id = "hvac-2"
profile = "ahu-v2"
[devices.modbus]
host = "127.0.0.2"

[[alarms]]
point = "hvac-2/supply-temp"
high = 30.0
priority = 4
message = "Supply air too warm"
"#;

#[test]
fn profiles_give_devices_their_points() {
    let c = load(PROFILED).unwrap_or_else(|e| panic!("{e}"));
    let ids = |d: usize| -> Vec<&str> {
        c.config.devices[d]
            .points
            .iter()
            .map(|p| p.id.as_str())
            .collect()
    };
    assert_eq!(ids(0), ["supply-temp", "fan-run", "filter-dirty"]);
    assert_eq!(ids(1), ["supply-temp", "fan-run"]);
    assert_eq!(c.points.len(), 5);
    let i = c.points.find("hvac-2/supply-temp").unwrap();
    assert_eq!(c.point_config(c.points.get(i)).scale, 0.1);
}

#[test]
fn profile_problems_are_reported_once_at_the_profile() {
    let text = PROFILED
        .replace(
            "address = 0\ntype = \"i16\"",
            "address = 0\ntype = \"bool\"",
        )
        .replace(
            "profile = \"ahu-v2\"\n[devices.modbus]\nhost = \"127.0.0.2\"",
            "profile = \"ahu-v9\"\n[devices.modbus]\nhost = \"127.0.0.2\"",
        );
    let errs = load(&text).unwrap_err().0;
    let bit: Vec<_> = errs
        .iter()
        .filter(|e| e.key == "profiles[0].points[0].bit")
        .collect();
    assert_eq!(bit.len(), 1, "{errs:?}");
    // `bit` is missing: the point's table header names the place.
    let header = text
        .lines()
        .position(|l| l == "[[profiles.points]]")
        .unwrap()
        + 1;
    assert_eq!(bit[0].line, Some(header), "{:?}", bit[0]);
    let unknown = errs
        .iter()
        .find(|e| e.key == "devices[1].profile")
        .expect("unknown profile");
    assert!(unknown.message.contains("ahu-v9"));
    assert!(unknown.line.is_some());
}

#[test]
fn inline_secrets_are_never_quoted_in_problems() {
    for value in ["\"hunter2\"", "123456", "'hunter2'"] {
        let text = MINIMAL.replace(
            "host = \"127.0.0.1\"\n\n[[devices]]",
            &format!("host = \"127.0.0.1\"\npassword = {value}\n\n[[devices]]"),
        );
        let Err(e) = load(&text) else {
            panic!("inline secret accepted")
        };
        let p = &e.0[0];
        assert_eq!(p.key, "uplink.password", "{e:?}");
        assert_eq!(p.message, INLINE_SECRET_MESSAGE);
        assert!(!e.to_string().contains("hunter2") && !e.to_string().contains("123456"));
    }
}

#[test]
fn a_missing_section_or_key_is_named_with_its_table() {
    let no_uplink = MINIMAL.replace("[uplink]\nhost = \"127.0.0.1\"\n", "");
    let e = load(&no_uplink).unwrap_err();
    assert_eq!(e.0.len(), 1, "{e}");
    assert_eq!(e.0[0].key, "uplink", "{e}");
    assert_eq!(e.0[0].line, Some(1), "{e}");
    assert_eq!(e.0[0].message, "missing (required section)");
    assert_eq!(e.1, Checked::Partly);
    assert!(e.hint().is_some());

    let e = load("").unwrap_err();
    assert_eq!(e.to_string(), "gw.toml:1: site: missing (required section)");

    // A point without `id`: named inside its device, at its table's header.
    let text = MINIMAL.replace(
        "[[devices.points]]\nid = \"zone-3\"\n",
        "[[devices.points]]\n",
    );
    let e = load(&text).unwrap_err();
    let header = text
        .lines()
        .position(|l| l == "[[devices.points]]")
        .unwrap()
        + 1;
    assert_eq!(e.0.len(), 1, "{e}");
    assert_eq!(e.0[0].key, "devices[0].points[0].id", "{e}");
    assert_eq!(e.0[0].line, Some(header), "{e}");
    assert_eq!(e.0[0].message, "missing (required key)");
}

#[test]
fn a_duplicate_key_is_named() {
    let text = MINIMAL.replace(
        "[uplink]\nhost = \"127.0.0.1\"\n",
        "[uplink]\nhost = \"a\"\nhost = \"b\"\n",
    );
    let e = load(&text).unwrap_err();
    let line = text.lines().position(|l| l == "host = \"b\"").unwrap() + 1;
    assert_eq!(e.0.len(), 1, "{e}");
    assert_eq!(e.0[0].key, "uplink.host", "{e}");
    assert_eq!(e.0[0].line, Some(line), "{e}");
    assert!(e.0[0].message.starts_with("duplicate key"), "{e}");

    // An inline table, then the same table as a section, in the second device.
    let text = MINIMAL.replace(
        "[[alarms]]",
        "[[devices]]\nid = \"b\"\nmodbus = { host = \"x\" }\n[devices.modbus]\nport = 1\n\n[[alarms]]",
    );
    let e = load(&text).unwrap_err();
    let line = text
        .lines()
        .position(|l| l == "[devices.modbus]")
        .unwrap_or(0);
    let line = text
        .lines()
        .skip(line + 1)
        .position(|l| l == "[devices.modbus]")
        .unwrap()
        + line
        + 2;
    assert_eq!(e.0[0].key, "devices[1].modbus", "{e}");
    assert_eq!(e.0[0].line, Some(line), "{e}");

    // A dotted key given twice, in an array of tables' element.
    let text = MINIMAL.replace(
        "address = 3",
        "address = 3\nmqtt.topic = \"a\"\nmqtt.topic = \"b\"",
    );
    let e = load(&text).unwrap_err();
    assert_eq!(e.0[0].key, "devices[0].points[0].mqtt.topic", "{e}");
}

#[test]
fn every_type_error_and_unknown_key_is_reported() {
    let text = MINIMAL
        .replace("gateway = \"gw-north-1\"", "gateway = 5")
        .replace(
            "[uplink]\nhost = \"127.0.0.1\"",
            "[uplink]\nhost = \"127.0.0.1\"\nport = \"x\"\nhots = 1",
        )
        .replace("port = 5020", "port = 5020\nunit = -1")
        .replace("address = 3", "address = \"3\"\nadress = 3")
        .replace("priority = 1", "priority = \"high\"\ncameras = [\"a\", 3]");
    let e = load(&text).unwrap_err();
    let line = |needle: &str| text.lines().position(|l| l == needle).unwrap() + 1;
    let expect = [
        ("site.gateway", line("gateway = 5")),
        ("uplink.port", line("port = \"x\"")),
        ("uplink.hots", line("hots = 1")),
        ("devices[0].modbus.unit", line("unit = -1")),
        ("devices[0].points[0].address", line("address = \"3\"")),
        ("devices[0].points[0].adress", line("adress = 3")),
        ("alarms[0].priority", line("priority = \"high\"")),
        ("alarms[0].cameras[1]", line("cameras = [\"a\", 3]")),
    ];
    let got: Vec<(&str, usize)> =
        e.0.iter()
            .map(|p| (p.key.as_str(), p.line.unwrap()))
            .collect();
    assert_eq!(got, expect, "{e}");
    assert_eq!(e.1, Checked::Partly);
    // The value checks did not run: `gateway` stood in as "" is not reported as an id.
    assert!(!e.to_string().contains("must be 1–64"), "{e}");
}

#[test]
fn type_errors_in_inline_tables_are_each_reported() {
    let text = MINIMAL.replace(
        "[devices.modbus]\nhost = \"127.0.0.1\"\nport = 5020",
        "modbus = { port = \"a\", host = \"127.0.0.1\", unit = \"b\" }",
    );
    let e = load(&text).unwrap_err();
    let keys: Vec<&str> = e.0.iter().map(|p| p.key.as_str()).collect();
    assert_eq!(
        keys,
        ["devices[0].modbus.port", "devices[0].modbus.unit"],
        "{e}"
    );
}

#[test]
fn a_file_with_right_types_is_checked_fully() {
    let e = load(&MINIMAL.replace("id = \"palm-bay\"", "id = \"Palm Bay\"")).unwrap_err();
    assert_eq!(e.1, Checked::Fully);
    assert!(e.hint().is_none());
}

#[test]
fn unknown_keys_of_cameras_clips_and_web_tls_are_reported_with_the_rest() {
    let text = MINIMAL.replace("id = \"palm-bay\"", "id = \"Palm Bay\"")
        + "\n[web.tls]\nnmaes = [\"gw\"]\n\n[[cameras]]\nid = \"gate\"\nurl = \"rtsp://10.0.0.5/main\"\nzoen = \"gate\"\n\n[clips]\nmax_byte = 5\n";
    let e = load(&text).unwrap_err();
    let line = |needle: &str| text.lines().position(|l| l.starts_with(needle)).unwrap() + 1;
    for (key, at) in [
        ("web.tls.nmaes", "nmaes"),
        ("cameras[0].zoen", "zoen"),
        ("clips.max_byte", "max_byte"),
    ] {
        let p =
            e.0.iter()
                .find(|p| p.key == key)
                .unwrap_or_else(|| panic!("{key}: {e}"));
        assert_eq!(p.message, "unknown key (misspelled, or not valid here)");
        assert_eq!(p.line, Some(line(at)), "{e}");
    }
    // The value checks ran too.
    assert!(e.0.iter().any(|p| p.key == "site.id"), "{e}");
    assert_eq!(e.1, Checked::Fully);
}

#[test]
fn web_service_and_telemetry_settings_are_range_checked() {
    let with = |extra: &str| format!("{MINIMAL}\n{extra}\n");
    for (section, key, bad, good) in [
        ("web", "session_idle_s", "0", "60"),
        ("web", "session_idle_s", "604801", "604800"),
        ("web", "login_failures", "0", "1"),
        ("web", "login_failures", "1001", "1000"),
        ("web", "login_window_s", "0", "1"),
        ("web", "login_window_s", "86401", "86400"),
        ("service", "liveness_grace_s", "0", "0.5"),
        ("service", "liveness_grace_s", "3601", "3600"),
        ("telemetry", "batch_s", "0", "0.01"),
        ("telemetry", "batch_s", "61", "60"),
    ] {
        let text = with(&format!("[{section}]\n{key} = {bad}"));
        let e = load(&text).unwrap_err();
        assert_eq!(e.0.len(), 1, "{key} = {bad}: {e}");
        assert_eq!(e.0[0].key, format!("{section}.{key}"), "{e}");
        assert!(e.0[0].message.starts_with("must be "), "{e}");
        assert_eq!(
            e.0[0].line,
            Some(text.lines().position(|l| l.starts_with(key)).unwrap() + 1)
        );
        let text = with(&format!("[{section}]\n{key} = {good}"));
        load(&text).unwrap_or_else(|e| panic!("{key} = {good}: {e}"));
    }
}

#[test]
fn the_metrics_token_must_be_readable_long_and_header_safe() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("metrics.token");
    let with = |token: Option<&str>| {
        if let Some(t) = token {
            std::fs::write(&file, t).unwrap();
        } else {
            let _ = std::fs::remove_file(&file);
        }
        let text = format!(
            "{MINIMAL}\n[web]\nmetrics_token = {{ file = \"{}\" }}\n",
            file.display()
        );
        load(&text)
    };
    with(Some("0123456789abcdef\n")).expect("16 characters and a newline");
    for (token, says) in [
        (None, "cannot read secret file"),
        (Some("\n"), "secret is empty"),
        (Some("0123456789abcde"), "at least 16 characters"),
        (Some("0123456789 abcdef"), "must not contain spaces"),
    ] {
        let e = with(token).unwrap_err();
        assert_eq!(e.0.len(), 1, "{token:?}: {e}");
        assert_eq!(e.0[0].key, "web.metrics_token", "{e}");
        assert!(e.0[0].message.contains(says), "{token:?}: {e}");
    }
}

fn problem<'a>(e: &'a ConfigErrors, key: &str) -> &'a ConfigProblem {
    e.0.iter()
        .find(|p| p.key == key)
        .unwrap_or_else(|| panic!("no problem at {key}: {e}"))
}

#[test]
fn a_secret_in_any_other_form_is_refused_without_its_value() {
    for value in [
        "[\"Hunter2Secret\"]",
        "[\"Hunter2Secret\", \"x\"]",
        "[]",
        "true",
        "1.5",
        "\"Hunter2Secret\"",
    ] {
        let text = MINIMAL.replace(
            "[uplink]\nhost = \"127.0.0.1\"",
            &format!("[uplink]\nhost = \"127.0.0.1\"\nusername = \"gw\"\npassword = {value}"),
        );
        let e = load(&text).unwrap_err();
        assert_eq!(
            problem(&e, "uplink.password").message,
            INLINE_SECRET_MESSAGE,
            "{value}: {e}"
        );
        // The problems are what check-config prints, the reload logs and
        // the config.changed event carries.
        assert!(!e.to_string().contains("Hunter2"), "{value}: {e}");
    }
    for (section, key) in [
        ("\n[web]\nmetrics_token = [\"Hunter2Secret0123456\"]\n", "web.metrics_token"),
        ("\n[[cameras]]\nid = \"gate\"\nurl = \"rtsp://10.0.0.5/main\"\nusername = \"gw\"\npassword = [\"Hunter2Secret\"]\n", "cameras[0].password"),
    ] {
        let e = load(&format!("{MINIMAL}{section}")).unwrap_err();
        assert_eq!(problem(&e, key).message, INLINE_SECRET_MESSAGE, "{e}");
        assert!(!e.to_string().contains("Hunter2"), "{e}");
    }
}

#[test]
fn camera_site_broker_and_push_secret_files_are_read() {
    let camera = |enabled: bool| {
        format!(
            "{MINIMAL}\n[[push.channels]]\nname = \"hook\"\nkind = \"webhook\"\nurl = \"https://push.example/hook\"\nsecret = {{ file = \"/nonexistent/hook.secret\" }}\n[[push.tiers]]\nname = \"guards\"\nchannels = [\"hook\"]\n[[push.rules]]\nname = \"all\"\ntiers = [\"guards\"]\n\n[site_broker]\nhost = \"127.0.0.1\"\nusername = \"gw\"\npassword = {{ file = \"/nonexistent/broker.pw\" }}\n\n[[cameras]]\nid = \"gate\"\nurl = \"rtsp://10.0.0.5/main\"\nusername = \"gw\"\npassword = {{ file = \"/nonexistent/cam.pw\" }}\nenabled = {enabled}\n"
        )
    };
    let e = load(&camera(true)).unwrap_err();
    assert_eq!(e.0.len(), 3, "{e}");
    assert!(
        problem(&e, "push.channels[0].secret")
            .message
            .contains("/nonexistent/hook.secret"),
        "{e}"
    );
    assert!(
        problem(&e, "cameras[0].password")
            .message
            .contains("/nonexistent/cam.pw"),
        "{e}"
    );
    assert!(
        problem(&e, "site_broker.password")
            .message
            .contains("/nonexistent/broker.pw"),
        "{e}"
    );
    // A disabled camera is not started: its password is not read.
    let e = load(&camera(false)).unwrap_err();
    assert_eq!(e.0.len(), 2, "{e}");
    assert!(e.0.iter().all(|p| p.key != "cameras[0].password"), "{e}");
}

#[test]
fn an_env_secret_unset_in_this_shell_is_a_warning_for_check_config() {
    let text = MINIMAL.replace(
        "[uplink]\nhost = \"127.0.0.1\"",
        "[uplink]\nhost = \"127.0.0.1\"\nusername = \"gw\"\npassword = { env = \"ESTATE_GW_TEST_UPLINK_PW_UNSET\" }",
    );
    // check-config: the service's environment may set it.
    let c = load_str_for(&text, Path::new("gw.toml"), Target::AnyMachine)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.warnings.len(), 1, "{:?}", c.warnings);
    let w = &c.warnings[0];
    assert_eq!(w.key, "uplink.password");
    assert!(
        w.message.contains("ESTATE_GW_TEST_UPLINK_PW_UNSET")
            && w.message.contains("service's environment"),
        "{w}"
    );
    // To run here, without it: refused.
    let e = load(&text).unwrap_err();
    assert_eq!(
        problem(&e, "uplink.password").message,
        "environment variable ESTATE_GW_TEST_UPLINK_PW_UNSET is not set"
    );
}

/// A self-signed certificate and its key, in PEM.
fn pem_pair() -> (String, String) {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    (ck.cert.pem(), ck.key_pair.serialize_pem())
}

#[test]
fn uplink_tls_material_is_loaded_as_the_uplink_loads_it() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = pem_pair();
    let write = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    };
    let (ca, crt, k) = (
        write("ca.pem", &cert),
        write("gw.crt", &cert),
        write("gw.key", &key),
    );
    let crt2 = write("other.crt", &cert);
    let text_file = write("notes.txt", "not a certificate\n");
    let with = |tls: &str| load(&format!("{MINIMAL}\n[uplink.tls]\n{tls}\n"));
    with(&format!(
        "ca_file = \"{ca}\"\ncert_file = \"{crt}\"\nkey_file = \"{k}\""
    ))
    .expect("a usable CA, certificate and key");
    for (tls, key, says) in [
        (
            format!("ca_file = \"{text_file}\""),
            "uplink.tls.ca_file",
            "no certificate",
        ),
        (
            "ca_file = \"/nonexistent/ca.pem\"".to_string(),
            "uplink.tls.ca_file",
            "/nonexistent/ca.pem",
        ),
        (
            format!("ca_file = \"{ca}\"\ncert_file = \"{k}\"\nkey_file = \"{crt}\""),
            "uplink.tls.cert_file",
            "no certificate",
        ),
        (
            format!("ca_file = \"{ca}\"\ncert_file = \"{crt}\"\nkey_file = \"{crt2}\""),
            "uplink.tls.key_file",
            "no private key",
        ),
        (
            format!("ca_file = \"{ca}\"\ncert_file = \"{crt}\""),
            "uplink.tls.key_file",
            "cert_file needs key_file",
        ),
    ] {
        let e = with(&tls).unwrap_err();
        assert_eq!(e.0.len(), 1, "{tls}: {e}");
        assert!(problem(&e, key).message.contains(says), "{tls}: {e}");
    }
}

#[test]
fn site_broker_tls_is_checked_as_the_uplinks() {
    let base = format!("{MINIMAL}\n[site_broker]\nhost = \"127.0.0.1\"\n[site_broker.tls]\n");
    // Every problem at once: the CA too when the client pair is half given.
    let e = load(&format!(
        "{base}ca_file = \"/nonexistent/ca.pem\"\ncert_file = \"/nonexistent/gw.crt\"\n"
    ))
    .unwrap_err();
    assert_eq!(e.0.len(), 2, "{e}");
    assert!(
        problem(&e, "site_broker.tls.key_file")
            .message
            .contains("needs key_file"),
        "{e}"
    );
    assert!(
        problem(&e, "site_broker.tls.ca_file")
            .message
            .contains("/nonexistent/ca.pem"),
        "{e}"
    );
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, pem_pair().0).unwrap();
    let e = load(&format!(
        "{base}ca_file = \"{}\"\ncert_file = \"{}\"\n",
        ca.display(),
        ca.display()
    ))
    .unwrap_err();
    assert_eq!(e.0.len(), 1, "{e}");
    assert_eq!(
        problem(&e, "site_broker.tls.key_file").message,
        "cert_file needs key_file"
    );
    load(&format!("{base}ca_file = \"{}\"\n", ca.display())).expect("a usable CA");
}

#[test]
fn web_tls_needs_a_pair_the_web_server_can_use() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = pem_pair();
    let c = dir.path().join("web.crt");
    let k = dir.path().join("web.key");
    std::fs::write(&c, &cert).unwrap();
    std::fs::write(&k, &key).unwrap();
    let with = |tls: &str| load(&format!("{MINIMAL}\n[web.tls]\n{tls}\n"));
    let (c, k) = (c.display(), k.display());
    with(&format!("cert = \"{c}\"\nkey = \"{k}\"")).expect("a usable pair");
    with("names = [\"gw.local\"]").expect("self-signed: neither cert nor key");
    for (tls, key, says) in [
        (
            format!("cert = \"{c}\""),
            "web.tls.key",
            "`cert` needs `key`",
        ),
        (
            format!("key = \"{k}\""),
            "web.tls.cert",
            "`key` needs `cert`",
        ),
        (
            format!("cert = \"/nonexistent/web.crt\"\nkey = \"{k}\""),
            "web.tls.cert",
            "/nonexistent/web.crt",
        ),
        (
            format!("cert = \"{c}\"\nkey = \"/nonexistent/web.key\""),
            "web.tls.key",
            "/nonexistent/web.key",
        ),
        (
            format!("cert = \"{k}\"\nkey = \"{k}\""),
            "web.tls.cert",
            "no certificate",
        ),
        (
            format!("cert = \"{c}\"\nkey = \"{c}\""),
            "web.tls.key",
            "no private key",
        ),
    ] {
        let e = with(&tls).unwrap_err();
        assert_eq!(e.0.len(), 1, "{tls}: {e}");
        assert!(problem(&e, key).message.contains(says), "{tls}: {e}");
    }
}

#[test]
fn a_web_port_below_1024_is_a_warning() {
    let c = load(&format!("{MINIMAL}\n[web]\nlisten = \"127.0.0.1:443\"\n")).unwrap();
    assert_eq!(c.warnings.len(), 1, "{:?}", c.warnings);
    assert_eq!(c.warnings[0].key, "web.listen");
    assert!(
        c.warnings[0].message.contains("unprivileged"),
        "{:?}",
        c.warnings
    );
    let c = load(&format!("{MINIMAL}\n[web]\nlisten = \"127.0.0.1:8443\"\n")).unwrap();
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
}

#[test]
fn relative_paths_are_relative_to_the_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let etc = dir.path().join("etc");
    std::fs::create_dir(&etc).unwrap();
    std::fs::write(etc.join("uplink.password"), "s3cret\n").unwrap();
    std::fs::write(etc.join("platform-ca.pem"), pem_pair().0).unwrap();
    let text = MINIMAL.replace(
        "[uplink]\nhost = \"127.0.0.1\"",
        "[journal]\npath = \"journal\"\n\n[uplink]\nhost = \"127.0.0.1\"\nusername = \"gw\"\npassword = { file = \"uplink.password\" }\n[uplink.tls]\nca_file = \"platform-ca.pem\"",
    ) + "\n[clips]\npath = \"../clips\"\n";
    let file = etc.join("gateway.toml");
    std::fs::write(&file, &text).unwrap();
    // The tests run in the crate's directory, which holds none of these
    // files: they are found next to the config file.
    assert!(!Path::new("uplink.password").exists());
    let c = load_for(&file, Target::AnyMachine).unwrap_or_else(|e| panic!("{e}"));
    let u = &c.config.uplink;
    assert_eq!(u.tls.as_ref().unwrap().ca_file, etc.join("platform-ca.pem"));
    assert_eq!(
        u.password.as_ref().unwrap().file.as_deref(),
        Some(etc.join("uplink.password").as_path())
    );
    assert_eq!(c.config.journal.path, etc.join("journal"));
    assert_eq!(c.config.clips.path, etc.join("../clips"));
    // Absolute paths stay as written.
    let text = text.replace("\"platform-ca.pem\"", "\"/nonexistent/ca.pem\"");
    let e = load_str(&text, &file).unwrap_err();
    assert!(
        problem(&e, "uplink.tls.ca_file")
            .message
            .starts_with("/nonexistent/ca.pem:"),
        "{e}"
    );
}
