// Package xetbench measures what serving Xet from the gateway is worth
// (issue 14): how many bytes a fine-tune costs the upstream once its base
// model's xorbs are cached, and how fast a Xet client downloads through a
// warm gateway compared with plain HTTP through the same warm gateway.
//
// The measurement is BenchmarkXetFineTune; see bench/README.md for how to
// run it and what it prints. Everything runs on loopback: the project's
// fake Hub, CDN and Xet CAS (internal/fakehub, real TLS) and a real
// gateway (package app, a real data_dir and badger index) in this process.
package xetbench
