// Package tcp is gocoll's backend between nodes: the spec's collectives over
// TCP, the role Gloo plays for torch.distributed.
//
// # Connections
//
// New is called by every rank of a group at about the same time. Each rank
// listens on one address (WithAddress or GOCOLL_SOCKET_ADDR; else the first
// address of the interface WithInterface or GOCOLL_SOCKET_IFNAME names, as
// GLOO_SOCKET_IFNAME does for Gloo; else the host name's address or the first
// non-loopback one), publishes it in the group's store, and builds a full mesh
// before New returns: no connection is made lazily in the middle of a
// collective. Each pair of ranks has two connections, one for data and one
// for control messages (aborts, goodbyes), so that news of a failure never
// waits behind a payload nobody reads. Connecting retries with backoff, each
// attempt bounded by WithConnectTimeout, until the group's timeout; a rank
// that cannot reach some peers fails with a *core.PeerError naming them.
//
// Every connection proves, before anything else is read from it, that its
// dialer holds the job secret (an HMAC-SHA256 challenge-response over both
// sides' nonces, ranks, role and job id), and the accepting side proves the
// same back; a connection that fails is closed, logged and counted, and the
// group forms anyway. (Connections are authenticated, not encrypted: run
// jobs on a network you trust, as with Gloo and MPI.) Addresses are read
// from the store again before every connection attempt, so a backend
// rebuilt under the same store keys does not chase its predecessor's.
//
// Data connections have TCP_NODELAY, a 4 MiB receive buffer and a 512 KiB
// send buffer where the kernel allows that much (a small send buffer made
// loopback rings 12-23% faster; see DefaultSendBuffer). Under the kernel's
// default limits (208 KiB) both are left to its autotuning: raise
// net.core.wmem_max and rmem_max to 4 MiB to get them. Ranks are best run
// with GOMAXPROCS at their share of the node's CPUs, which gocollrun sets.
// Each frame is a 32-byte header (sequence number,
// collective, dtype, op, count, root, algorithm, length) and its payload,
// written with one vectored write by a per-peer sender goroutine, so that a
// rank sends, receives and reduces at once (a small frame with nothing queued
// before it is written by the calling goroutine, saving a goroutine switch on
// the latency path); a steady-state collective allocates nothing. The
// receiver checks every header against its own call before it reads the
// payload: ranks that disagree get a *core.MismatchError.
//
// # Algorithms
//
// Chosen by message size and group size (thresholds and forced choices are
// Options, or GOCOLL_TCP_ALGORITHMS), the same on every rank:
//
//   - allreduce: recursive doubling for small messages, Rabenseifner's
//     reduce-scatter by halving and allgather by doubling for medium ones
//     (both fold a non-power-of-two group onto a power of two), and for large
//     ones a ring (reduce-scatter then allgather) over slices of n chunks,
//     run as a wavefront so that 2(n-1) chunks are in flight on every
//     connection while partial sums stay in a few cached scratch chunks;
//   - broadcast and reduce: a binomial tree (small) or a pipelined chain
//     (large);
//   - allgather and reduce_scatter: a pipelined ring;
//   - gather and scatter: direct to and from the root;
//   - alltoall: pairwise exchange, all sends queued at once;
//   - barrier: dissemination;
//   - send and recv: one frame stream per direction and pair.
//
// Results are identical bit for bit on every rank: where two ranks compute
// the same element they combine the same operands in the same order, and
// otherwise one rank computes it and the others copy its bytes. Avg is a sum
// followed by one division (core.Kernel.Finish) of the final value.
//
// # Failures
//
// Every wait is bounded by the call's context deadline or the group's
// timeout. A rank that dies or resets a connection makes the collective fail
// on every rank with a *core.PeerError naming it: the rank that sees the
// broken connection tells all others on their control connections and
// interrupts their waits. A rank whose wait times out first reads any frame
// it was sent but did not expect (ranks that disagree on a root wait for
// different ranks: that is a *core.MismatchError), then reports whom it
// waited for to every rank and, after a short grace, follows those reports
// to the rank that held everyone up (it never arrived, or hangs) and names
// that one, not the innocent ranks waiting on it. A cancelled context
// abandons the call and the others are told which rank left.
//
// Ranks whose part of a rooted collective (broadcast, scatter, gather,
// reduce) did not depend on a disagreeing rank may return success from that
// call; the disagreement reaches them as the error of their next call. After any failure the streams between ranks are out of step, so
// the backend stays failed (every later call returns the error) and must be
// closed and rebuilt. Close says goodbye to every peer, closes every
// connection and ends every goroutine the backend started.
package tcp
