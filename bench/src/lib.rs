//! Benchmarks for the NTS time service: a load generator (`nts-loadgen`), a bare
//! UDP echo baseline (`nts-echo`) and a runner (`nts-bench`, driven by
//! `bench/run.sh`) that measures `nts-time-server` and chrony one after the
//! other on loopback. See `docs/benchmarks.md`.

pub mod loadgen;
pub mod percore;
pub mod report;
pub mod server_config;
pub mod sys;
