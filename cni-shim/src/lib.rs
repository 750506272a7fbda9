//! overlayd-cni: a CNI 1.1 plugin (0.3.0 .. 1.1.0) that wires pods onto the overlayd network:
//! a bridge holding the node's gateway address, one veth pair per pod, and host-local style
//! IPAM from the node subnet overlayd writes to subnet.env.
//!
//! I/O-free parts (unit tested): `config`, `version`, `subnet_env` (the file's one definition:
//! overlayd writes it with the same type), `result`, `plan`, and the
//! `ipam::Pool` allocation order. System parts: `ipam::Store` (files), `netns`, `net`
//! (netlink), `plugin` (the commands). `execute` is the whole program minus process I/O.

pub mod config;
pub mod error;
pub mod fuzz_targets;
pub mod ipam;
pub mod net;
pub mod netns;
pub mod plan;
pub mod plugin;
pub mod result;
pub mod subnet_env;
pub mod version;

use config::{peek_version, CniEnv, Command, NetConf};
use error::CniError;
use version::Version;

/// What the binary prints and its exit status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub stdout: String,
    pub exit_code: i32,
}

/// Runs one plugin invocation: `get` reads the environment, `stdin` is the network config.
/// Never panics: a panic anywhere below becomes a CNI error.
pub fn execute(get: impl Fn(&str) -> Option<String>, stdin: &[u8]) -> Outcome {
    let version_for_errors = peek_version(stdin)
        .filter(|v| Version::parse(v).is_ok())
        .unwrap_or_else(|| version::CURRENT.to_string());
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| dispatch(get, stdin)))
        .unwrap_or_else(|p| {
            let what = p
                .downcast_ref::<&str>()
                .map(|s| (*s).to_string())
                .or_else(|| p.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            Err(CniError::internal(format!(
                "internal error (a bug): {what}"
            )))
        });
    match result {
        Ok(Some(v)) => Outcome {
            stdout: format!("{v}\n"),
            exit_code: 0,
        },
        Ok(None) => Outcome {
            stdout: String::new(),
            exit_code: 0,
        },
        Err(e) => Outcome {
            stdout: format!("{}\n", e.to_json(&version_for_errors)),
            exit_code: 1,
        },
    }
}

fn dispatch(
    get: impl Fn(&str) -> Option<String>,
    stdin: &[u8],
) -> Result<Option<serde_json::Value>, CniError> {
    let env = CniEnv::from_lookup(get)?;
    if env.command == Command::Version {
        return Ok(Some(version::version_info()));
    }
    let conf = NetConf::parse(stdin)?;
    let v = conf.version;
    let refuse = |cmd: &str, since: &str| {
        Err(CniError::new(
            error::code::INCOMPATIBLE_VERSION,
            format!(
                "{cmd} is not part of cniVersion {} (it exists from {since} on)",
                v.as_str()
            ),
        ))
    };
    match env.command {
        Command::Add => plugin::add(&env, &conf).map(Some),
        Command::Del => plugin::del(&env, &conf).map(|()| None),
        Command::Check if !v.has_check() => refuse("CHECK", "0.4.0"),
        Command::Check => plugin::check(&env, &conf).map(|()| None),
        Command::Status if !v.has_status_and_gc() => refuse("STATUS", "1.1.0"),
        Command::Status => plugin::status(&conf).map(|()| None),
        Command::Gc if !v.has_status_and_gc() => refuse("GC", "1.1.0"),
        Command::Gc => plugin::gc(&conf).map(|()| None),
        Command::Version => Ok(Some(version::version_info())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(pairs: &[(&str, &str)], stdin: &str) -> Outcome {
        let m: std::collections::HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        execute(|k| m.get(k).cloned(), stdin.as_bytes())
    }

    #[test]
    fn version_command_lists_supported_versions() {
        let o = run(&[("CNI_COMMAND", "VERSION")], r#"{"cniVersion":"0.4.0"}"#);
        assert_eq!(o.exit_code, 0);
        let v: serde_json::Value = serde_json::from_str(&o.stdout).unwrap();
        assert_eq!(v["cniVersion"], "1.1.0");
        assert_eq!(
            v["supportedVersions"],
            serde_json::json!(["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"])
        );
        assert_eq!(run(&[("CNI_COMMAND", "VERSION")], "").exit_code, 0);
    }

    #[test]
    fn errors_are_json_with_the_requested_version() {
        let o = run(
            &[("CNI_COMMAND", "ADD")],
            r#"{"cniVersion":"0.4.0","name":"n"}"#,
        );
        assert_eq!(o.exit_code, 1);
        let v: serde_json::Value = serde_json::from_str(&o.stdout).unwrap();
        assert_eq!(v["code"], 4);
        assert_eq!(v["cniVersion"], "0.4.0");
    }

    #[test]
    fn commands_gated_by_version() {
        let env = [
            ("CNI_COMMAND", "CHECK"),
            ("CNI_CONTAINERID", "c"),
            ("CNI_NETNS", "/x"),
            ("CNI_IFNAME", "eth0"),
        ];
        let o = run(&env, r#"{"cniVersion":"0.3.1","name":"n"}"#);
        assert!(o.stdout.contains("\"code\":1"), "{}", o.stdout);
        let o = run(
            &[("CNI_COMMAND", "STATUS")],
            r#"{"cniVersion":"1.0.0","name":"n"}"#,
        );
        assert!(o.stdout.contains("\"code\":1"), "{}", o.stdout);
        let o = run(
            &[("CNI_COMMAND", "GC")],
            r#"{"cniVersion":"1.0.0","name":"n"}"#,
        );
        assert!(o.stdout.contains("\"code\":1"), "{}", o.stdout);
    }

    #[test]
    fn status_reports_not_ready_without_subnet_env() {
        let o = run(
            &[("CNI_COMMAND", "STATUS")],
            r#"{"cniVersion":"1.1.0","name":"n","subnetFile":"/nonexistent/subnet.env"}"#,
        );
        assert_eq!(o.exit_code, 1);
        assert!(o.stdout.contains("\"code\":50"), "{}", o.stdout);
    }
}
