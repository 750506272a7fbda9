//! CNI spec versions this plugin speaks, and what each one allows.

use crate::error::{code, CniError};

/// The newest version; used in VERSION output and in errors when the request had none we know.
pub const CURRENT: &str = "1.1.0";

/// Every version we accept, oldest first (VERSION lists them in this order).
pub const SUPPORTED: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// A supported spec version. Ordered, so `v >= Version::V0_4_0` reads as the spec does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Version {
    V0_3_0,
    V0_3_1,
    V0_4_0,
    V1_0_0,
    V1_1_0,
}

impl Version {
    pub fn parse(s: &str) -> Result<Self, CniError> {
        Ok(match s {
            "0.3.0" => Self::V0_3_0,
            "0.3.1" => Self::V0_3_1,
            "0.4.0" => Self::V0_4_0,
            "1.0.0" => Self::V1_0_0,
            "1.1.0" => Self::V1_1_0,
            "" => {
                return Err(CniError::new(
                    code::INCOMPATIBLE_VERSION,
                    "network config has no cniVersion (that means 0.1.0, which this plugin does not support)",
                )
                .with_details(format!("supported versions: {}", SUPPORTED.join(", "))))
            }
            other => {
                return Err(CniError::new(
                    code::INCOMPATIBLE_VERSION,
                    format!("incompatible CNI version {other:?}"),
                )
                .with_details(format!("supported versions: {}", SUPPORTED.join(", "))))
            }
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::V0_3_0 => "0.3.0",
            Self::V0_3_1 => "0.3.1",
            Self::V0_4_0 => "0.4.0",
            Self::V1_0_0 => "1.0.0",
            Self::V1_1_0 => "1.1.0",
        }
    }

    /// CHECK exists from 0.4.0 on.
    pub fn has_check(self) -> bool {
        self >= Self::V0_4_0
    }

    /// STATUS and GC exist from 1.1.0 on.
    pub fn has_status_and_gc(self) -> bool {
        self >= Self::V1_1_0
    }

    /// `ips[].version` ("4"/"6") is part of the result up to 0.4.0 and removed in 1.0.0.
    pub fn ip_has_version_field(self) -> bool {
        self < Self::V1_0_0
    }

    /// `interfaces[].mtu` is part of the result from 1.1.0 on.
    pub fn interface_has_mtu(self) -> bool {
        self >= Self::V1_1_0
    }
}

/// The VERSION command's output.
pub fn version_info() -> serde_json::Value {
    serde_json::json!({ "cniVersion": CURRENT, "supportedVersions": SUPPORTED })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_supported_version() {
        for s in SUPPORTED {
            assert_eq!(Version::parse(s).unwrap().as_str(), *s);
        }
    }

    #[test]
    fn rejects_unknown_and_missing_versions_with_code_1() {
        for s in ["0.1.0", "0.2.0", "2.0.0", "1.0", "", "latest"] {
            assert_eq!(Version::parse(s).unwrap_err().code, 1, "{s}");
        }
    }

    #[test]
    fn capabilities_follow_the_spec() {
        assert!(!Version::V0_3_1.has_check());
        assert!(Version::V0_4_0.has_check());
        assert!(!Version::V1_0_0.has_status_and_gc());
        assert!(Version::V1_1_0.has_status_and_gc());
        assert!(Version::V0_4_0.ip_has_version_field());
        assert!(!Version::V1_0_0.ip_has_version_field());
    }
}
