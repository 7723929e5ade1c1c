//! The dashboard's stylesheet and script, compiled into the binary (`include_str!`): no file
//! to install, no JavaScript toolchain at build time. Their paths carry the version, so a
//! browser never keeps an old one across an upgrade.

/// Where the stylesheet is served.
pub const CSS_PATH: &str = concat!("/assets/app.css?v=", env!("CARGO_PKG_VERSION"));
/// Where the script is served.
pub const JS_PATH: &str = concat!("/assets/app.js?v=", env!("CARGO_PKG_VERSION"));

pub const CSS: &str = include_str!("assets/app.css");
pub const JS: &str = include_str!("assets/app.js");
