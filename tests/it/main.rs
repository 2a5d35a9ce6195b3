#![allow(missing_docs, clippy::unwrap_used)]
//! Integration tests: real nodes on 127.0.0.1:0, real mutual TLS with
//! certificates made at test time, real gRPC. One test binary (STYLE.md).

mod authz;
mod cli;
mod console;
mod datasets;
mod demo;
mod deploy;
mod evidence;
mod exchange;
mod faults;
mod fuzz_corpus;
mod h2limits;
mod hostile;
mod interop;
mod ledger;
mod ledger_rpc;
mod lifecycle;
mod merkle;
mod mtls;
mod ops;
mod rotation;
mod s3;
mod slowloris;
mod support;
mod threats;
mod tlog;
mod transfer;
mod wire_spec;
mod witness;
