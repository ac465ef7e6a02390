//! The security suite: master-key handling, and the attacks a security team would try.

mod admission;
mod brute;
mod canary;
mod crypto;
mod metrics_injection;
mod smuggling;
mod ssrf;
mod token_totals;
