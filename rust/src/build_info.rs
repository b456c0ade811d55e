//! What the native module knows about its own build.

pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The Cargo profile: release builds have debug assertions off.
pub fn profile() -> &'static str {
    if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_is_semver() {
        let parts: Vec<&str> = VERSION.split('.').collect();
        assert_eq!(parts.len(), 3);
        assert!(parts.iter().all(|p| p.parse::<u32>().is_ok()));
    }

    #[test]
    fn profile_matches_debug_assertions() {
        assert_eq!(profile() == "debug", cfg!(debug_assertions));
    }
}
