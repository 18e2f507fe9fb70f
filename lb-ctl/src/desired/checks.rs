//! The keys of each check type under `[service.health]` beyond `tcp`'s:
//! `http` and `https` (`path`, `expect_*`; `sni`, `ca_file`, `verify`),
//! `udp` (`send` or `send_hex`, `expect`) and `script` (`command`,
//! `dynamic_weight`). A key given to a check type it does not belong to is
//! refused, not ignored; files a check needs (the CA file, the program)
//! are looked at here, when the config is loaded, so that a typo is named
//! at once rather than taking every backend DOWN later.
use std::{os::unix::fs::PermissionsExt as _, path::PathBuf};

use super::{
    bounds::{
        MAX_COMMAND_ARG_LEN, MAX_COMMAND_ARGS, MAX_EXPECT_BODY_LEN, MAX_HEALTH_PATH_LEN,
        MAX_SEND_LEN,
    },
    model::{Probe, Tls},
    names::{Check, Named as _},
    problem::Problems,
    written::RawHealth,
};
use crate::daemon::health::tls;

/// The probe `check` makes from `raw`'s keys, every problem named under `key`.
pub(super) fn probe_of(
    key: &str,
    check: Check,
    raw: &RawHealth,
    problems: &mut Problems,
) -> Option<Probe> {
    refuse_foreign_keys(key, check, raw, problems);
    match check {
        Check::None => None,
        Check::Tcp => Some(Probe::Tcp),
        Check::Http | Check::Https => {
            let tls = (check == Check::Https).then(|| tls_of(key, raw, problems));
            Some(http_of(key, raw, tls, problems))
        }
        Check::Udp => Some(udp_of(key, raw, problems)),
        Check::Script => Some(script_of(key, raw, problems)),
    }
}

/// The keys that belong to one check type only, and whether `raw` has each.
fn typed_keys(raw: &RawHealth) -> [(&'static str, bool, &'static [Check]); 8] {
    const HTTPS: &[Check] = &[Check::Https];
    const UDP: &[Check] = &[Check::Udp];
    const SCRIPT: &[Check] = &[Check::Script];
    [
        ("sni", raw.sni.is_some(), HTTPS),
        ("ca_file", raw.ca_file.is_some(), HTTPS),
        ("verify", raw.verify.is_some(), HTTPS),
        ("send", raw.send.is_some(), UDP),
        ("send_hex", raw.send_hex.is_some(), UDP),
        ("expect", raw.expect.is_some(), UDP),
        ("command", raw.command.is_some(), SCRIPT),
        ("dynamic_weight", raw.dynamic_weight.is_some(), SCRIPT),
    ]
}

fn refuse_foreign_keys(key: &str, check: Check, raw: &RawHealth, problems: &mut Problems) {
    for (name, given, belongs) in typed_keys(raw) {
        if given && !belongs.contains(&check) {
            let only: Vec<String> = belongs.iter().map(|c| format!("{:?}", c.name())).collect();
            problems.add(
                format!("{key}.{name}"),
                format!("only for check = {}, not {:?}", only.join(" or "), check.name()),
            );
        }
    }
}

/// `path`, `expect_status` and `expect_body`, over TCP or TLS.
fn http_of(key: &str, raw: &RawHealth, tls: Option<Tls>, problems: &mut Problems) -> Probe {
    let path = raw.path.clone();
    if path.len() > MAX_HEALTH_PATH_LEN {
        problems.add(
            format!("{key}.path"),
            format!("{} bytes long; at most {MAX_HEALTH_PATH_LEN}", path.len()),
        );
    } else if !path.starts_with('/')
        || path.chars().any(|c| c.is_ascii_whitespace() || c.is_ascii_control())
    {
        problems.add(
            format!("{key}.path"),
            format!("{path:?} must start with '/' and contain no spaces"),
        );
    }
    let status = u16::try_from(raw.expect_status).ok().filter(|s| (100..=599).contains(s));
    if status.is_none() {
        problems.add(
            format!("{key}.expect_status"),
            format!("{} is not an HTTP status (100 to 599)", raw.expect_status),
        );
    }
    check_pattern(&format!("{key}.expect_body"), raw.expect_body.as_deref(), problems);
    Probe::Http {
        path,
        expect_status: status.unwrap_or(200),
        expect_body: raw.expect_body.clone(),
        tls,
    }
}

/// A regular expression of at most `MAX_EXPECT_BODY_LEN` bytes, if given.
fn check_pattern(key: &str, pattern: Option<&str>, problems: &mut Problems) {
    let Some(pattern) = pattern else { return };
    if pattern.len() > MAX_EXPECT_BODY_LEN {
        problems.add(key, format!("{} bytes long; at most {MAX_EXPECT_BODY_LEN}", pattern.len()));
    } else if let Err(e) = regex_lite::Regex::new(pattern) {
        problems.add(key, format!("{pattern:?} is not a regular expression: {e}"));
    }
}

/// `sni`, `ca_file` and `verify`.
fn tls_of(key: &str, raw: &RawHealth, problems: &mut Problems) -> Tls {
    let verify = raw.verify.unwrap_or(true);
    if let Some(sni) = &raw.sni
        && let Err(why) = tls::server_name(sni)
    {
        problems.add(format!("{key}.sni"), format!("{sni:?} {why}"));
    }
    let ca_file = raw.ca_file.as_ref().map(PathBuf::from);
    match &ca_file {
        Some(_) if !verify => problems.add(
            format!("{key}.ca_file"),
            "is not used with verify = false: remove one of the two",
        ),
        Some(path) => {
            if let Err(why) = tls::read_ca_file(path) {
                problems.add(format!("{key}.ca_file"), why);
            }
        }
        None if verify && tls::system_roots().is_empty() => problems.add(
            format!("{key}.ca_file"),
            format!(
                "not given, and the system has no root certificates ({}): install ca-certificates or give ca_file",
                tls::SYSTEM_ROOTS_HINT
            ),
        ),
        None => {}
    }
    Tls { sni: raw.sni.clone(), ca_file, verify }
}

/// `send` or `send_hex` (exactly one), and `expect`.
fn udp_of(key: &str, raw: &RawHealth, problems: &mut Problems) -> Probe {
    let send = match (&raw.send, &raw.send_hex) {
        (Some(text), None) => text.as_bytes().to_vec(),
        (None, Some(hex)) => parse_hex(hex).unwrap_or_else(|why| {
            problems.add(format!("{key}.send_hex"), why);
            Vec::new()
        }),
        (Some(_), Some(_)) => {
            problems.add(format!("{key}.send"), "give send or send_hex, not both");
            Vec::new()
        }
        (None, None) => {
            problems.add(
                format!("{key}.send"),
                "a udp check needs the datagram it sends: send (text) or send_hex",
            );
            Vec::new()
        }
    };
    if send.len() > MAX_SEND_LEN {
        let which = if raw.send.is_some() { "send" } else { "send_hex" };
        problems.add(
            format!("{key}.{which}"),
            format!("{} bytes long; at most {MAX_SEND_LEN}", send.len()),
        );
    }
    check_pattern(&format!("{key}.expect"), raw.expect.as_deref(), problems);
    Probe::Udp { send, expect: raw.expect.clone() }
}

/// `"00 01 ff"` or `"0001ff"`: pairs of hex digits, spaces between pairs allowed.
pub fn parse_hex(text: &str) -> Result<Vec<u8>, String> {
    let mut bytes = Vec::new();
    for word in text.split_ascii_whitespace() {
        if word.len() % 2 != 0 {
            return Err(format!("{word:?} is not whole bytes: two hex digits each"));
        }
        for pair in word.as_bytes().chunks(2) {
            let pair = std::str::from_utf8(pair).unwrap_or("");
            let byte = u8::from_str_radix(pair, 16)
                .map_err(|_| format!("{pair:?} is not two hex digits"))?;
            bytes.push(byte);
        }
    }
    if bytes.is_empty() {
        return Err("is empty: give at least one byte".into());
    }
    Ok(bytes)
}

/// The bytes as `send_hex` writes them: `"00 01 ff"`.
pub fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(" ")
}

/// `command` (an executable file, by its absolute path, and its first
/// arguments) and `dynamic_weight`.
fn script_of(key: &str, raw: &RawHealth, problems: &mut Problems) -> Probe {
    let command = raw.command.clone().unwrap_or_default();
    let at = format!("{key}.command");
    if let Some(why) = command_problem(&command) {
        problems.add(at, why);
    }
    Probe::Script { command, dynamic_weight: raw.dynamic_weight.unwrap_or(false) }
}

/// What is wrong with `command`, if anything.
fn command_problem(command: &[String]) -> Option<String> {
    let Some(program) = command.first() else {
        return Some(
            "a script check needs the program to run: command = [\"/path/to/check\", ...]".into(),
        );
    };
    if command.len() > MAX_COMMAND_ARGS {
        return Some(format!("{} words; at most {MAX_COMMAND_ARGS}", command.len()));
    }
    if let Some(long) = command.iter().find(|a| a.len() > MAX_COMMAND_ARG_LEN || a.contains('\0')) {
        return Some(format!(
            "{long:.40?}...: a word is at most {MAX_COMMAND_ARG_LEN} bytes, without NUL"
        ));
    }
    if !program.starts_with('/') {
        // No PATH lookup: what runs is what the file names.
        return Some(format!("{program:?} must be an absolute path"));
    }
    match std::fs::metadata(program) {
        Err(e) => Some(format!("{program:?}: {e}")),
        Ok(m) if !m.is_file() => Some(format!("{program:?} is not a file")),
        Ok(m) if m.permissions().mode() & 0o111 == 0 => Some(format!(
            "{program:?} is not executable (mode {:o})",
            m.permissions().mode() & 0o7777
        )),
        Ok(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_is_pairs_of_digits_with_optional_spaces() {
        assert_eq!(parse_hex("00 01 ff").unwrap(), [0, 1, 255]);
        assert_eq!(parse_hex("0001FF").unwrap(), [0, 1, 255]);
        assert_eq!(parse_hex(" 0a0b  0c ").unwrap(), [10, 11, 12]);
        assert_eq!(parse_hex("0").unwrap_err(), "\"0\" is not whole bytes: two hex digits each");
        assert_eq!(parse_hex("0g").unwrap_err(), "\"0g\" is not two hex digits");
        assert_eq!(parse_hex("  ").unwrap_err(), "is empty: give at least one byte");
        assert_eq!(to_hex(&parse_hex("DEAD beef").unwrap()), "de ad be ef");
        // docs/configuration.md's DNS query: an A query for example.com.
        let query = parse_hex("12 34 01 00 00 01 00 00 00 00 00 00 07 65 78 61 6d 70 6c 65 03 63 6f 6d 00 00 01 00 01").unwrap();
        assert_eq!(query.len(), 12 + 13 + 4);
        assert_eq!(&query[12..25], b"\x07example\x03com\x00");
        assert_eq!(&query[25..], [0, 1, 0, 1], "type A, class IN");
    }

    #[test]
    fn a_command_must_name_an_executable_file() {
        let words = |w: &[&str]| w.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert_eq!(command_problem(&words(&["/bin/true", "-x"])), None);
        assert!(command_problem(&[]).unwrap().starts_with("a script check needs"));
        assert_eq!(
            command_problem(&words(&["true"])).unwrap(),
            "\"true\" must be an absolute path"
        );
        assert_eq!(
            command_problem(&words(&["/nonexistent/check"])).unwrap(),
            "\"/nonexistent/check\": No such file or directory (os error 2)"
        );
        assert_eq!(command_problem(&words(&["/tmp"])).unwrap(), "\"/tmp\" is not a file");
        let dir = std::env::temp_dir().join(format!("lb-checks-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let plain = dir.join("plain");
        std::fs::write(&plain, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&plain, std::fs::Permissions::from_mode(0o644)).unwrap();
        let plain = plain.display().to_string();
        assert_eq!(
            command_problem(std::slice::from_ref(&plain)).unwrap(),
            format!("{plain:?} is not executable (mode 644)")
        );
        let many = vec!["/bin/true".to_owned(); MAX_COMMAND_ARGS + 1];
        assert_eq!(command_problem(&many).unwrap(), format!("{} words; at most 32", 33));
        assert_eq!(command_problem(&many[..MAX_COMMAND_ARGS]), None, "at the bound");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
