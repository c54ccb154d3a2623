//! The bottom layer: named crash points for the tests that kill a process at each
//! one. Every layer above uses `crate::fail_point!`; this module uses nothing.

/// `fail_point!(name)`: a named crash point (the `fail` crate) under the
/// `failpoints` feature; nothing otherwise.
#[cfg(feature = "failpoints")]
macro_rules! fail_point {
    ($name:expr) => {
        fail::fail_point!($name)
    };
}
#[cfg(not(feature = "failpoints"))]
macro_rules! fail_point {
    ($name:expr) => {};
}
pub(crate) use fail_point;
