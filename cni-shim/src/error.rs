//! CNI errors as the spec defines them: a well-known code, a message a person can act on,
//! and details. Owns the mapping to the JSON error object; never prints anything itself.

use serde::Serialize;

/// Well-known CNI error codes (spec section "Error"), plus this plugin's own (100+).
pub mod code {
    /// Incompatible CNI version.
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    /// Unsupported field in network configuration.
    pub const UNSUPPORTED_FIELD: u32 = 2;
    /// Container unknown or does not exist.
    pub const UNKNOWN_CONTAINER: u32 = 3;
    /// Invalid necessary environment variables, like CNI_COMMAND, CNI_CONTAINERID, etc.
    pub const INVALID_ENV: u32 = 4;
    /// I/O failure.
    pub const IO_FAILURE: u32 = 5;
    /// Failed to decode content.
    pub const DECODE_FAILURE: u32 = 6;
    /// Invalid network config.
    pub const INVALID_CONFIG: u32 = 7;
    /// Try again later: a transient condition (subnet.env not written yet, lock busy,
    /// subnet exhausted until some pod is deleted).
    pub const TRY_AGAIN_LATER: u32 = 11;
    /// STATUS: the plugin is not available (overlayd has not written subnet.env).
    pub const PLUGIN_NOT_AVAILABLE: u32 = 50;
    /// CHECK found the attachment differs from what ADD created.
    pub const CHECK_FAILED: u32 = 100;
    /// Any other failure (netlink, filesystem); the message says which.
    pub const INTERNAL: u32 = 999;
}

/// A CNI error, printed on stdout as `{cniVersion, code, msg, details}`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{msg}{}", if details.is_empty() { String::new() } else { format!(": {details}") })]
pub struct CniError {
    pub code: u32,
    pub msg: String,
    pub details: String,
}

impl CniError {
    pub fn new(code: u32, msg: impl Into<String>) -> Self {
        Self {
            code,
            msg: msg.into(),
            details: String::new(),
        }
    }

    pub fn with_details(mut self, details: impl Into<String>) -> Self {
        self.details = details.into();
        self
    }

    pub fn invalid_env(msg: impl Into<String>) -> Self {
        Self::new(code::INVALID_ENV, msg)
    }

    pub fn invalid_config(msg: impl Into<String>) -> Self {
        Self::new(code::INVALID_CONFIG, msg)
    }

    pub fn internal(msg: impl Into<String>) -> Self {
        Self::new(code::INTERNAL, msg)
    }

    pub fn check_failed(msg: impl Into<String>) -> Self {
        Self::new(code::CHECK_FAILED, msg)
    }

    /// The JSON document the runtime reads from stdout.
    pub fn to_json(&self, cni_version: &str) -> serde_json::Value {
        #[derive(Serialize)]
        struct Wire<'a> {
            #[serde(rename = "cniVersion")]
            cni_version: &'a str,
            code: u32,
            msg: &'a str,
            #[serde(skip_serializing_if = "str::is_empty")]
            details: &'a str,
        }
        serde_json::to_value(Wire {
            cni_version,
            code: self.code,
            msg: &self.msg,
            details: &self.details,
        })
        .unwrap_or(serde_json::Value::Null)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_json_has_spec_fields() {
        let e = CniError::invalid_env("bad CNI_IFNAME").with_details("too long");
        let v = e.to_json("1.0.0");
        assert_eq!(v["cniVersion"], "1.0.0");
        assert_eq!(v["code"], 4);
        assert_eq!(v["msg"], "bad CNI_IFNAME");
        assert_eq!(v["details"], "too long");
        assert_eq!(e.to_string(), "bad CNI_IFNAME: too long");
    }

    #[test]
    fn empty_details_are_omitted() {
        let v = CniError::internal("x").to_json("1.1.0");
        assert!(v.get("details").is_none());
    }
}
