//! The security suite: master-key handling, and the attacks a security team would try.

mod brute;
mod canary;
mod crypto;
mod smuggling;
mod ssrf;
mod way_out;
