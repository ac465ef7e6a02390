//! HTTP surfaces. Each feature module returns its own router, merged in [`crate::app`].

pub mod error;
pub mod ops;
pub mod proxy;
