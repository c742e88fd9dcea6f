//! Test PKI for TLS brokers: a CA, a server certificate for 127.0.0.1, a
//! client certificate and a mosquitto password file, made with the openssl
//! and mosquitto_passwd commands in a given directory.
#![allow(dead_code)]

use std::path::Path;
use std::process::Command;

/// The password of `user` in the generated password file.
pub const PASSWORD: &str = "s3cret-pw";

fn sh(dir: &Path, script: &str) {
    let out = Command::new("sh")
        .arg("-ec")
        .arg(script)
        .current_dir(dir)
        .output()
        .expect("running sh");
    assert!(
        out.status.success(),
        "{script}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// True when openssl and mosquitto_passwd are installed.
pub fn tools_present() -> bool {
    crate::common::which("openssl").is_some() && crate::common::which("mosquitto_passwd").is_some()
}

/// Write `ca.pem`, `server.pem`/`server.key`, `client.pem`/`client.key` and
/// `passwd` (one account, `user` with [`PASSWORD`]) into `dir`.
pub fn make(dir: &Path, user: &str) {
    sh(
        dir,
        &format!(
            r#"
openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 2 -subj "/CN=estate test CA" 2>/dev/null
openssl req -newkey rsa:2048 -nodes -keyout server.key -out server.csr -subj "/CN=127.0.0.1" 2>/dev/null
printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\n' > server.ext
openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out server.pem -days 2 -extfile server.ext 2>/dev/null
openssl req -newkey rsa:2048 -nodes -keyout client.key -out client.csr -subj "/CN={user}" 2>/dev/null
printf 'extendedKeyUsage=clientAuth\n' > client.ext
openssl x509 -req -in client.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out client.pem -days 2 -extfile client.ext 2>/dev/null
mosquitto_passwd -b -c passwd {user} '{PASSWORD}'
chmod 600 passwd server.key
"#
        ),
    );
}
