// Package tcp is gocoll's backend between nodes: the runtime's collectives
// over TCP, the role Gloo plays for torch.distributed. It implements
// core.Backend and is driven through a core.Guard, which checks every
// request (core.Check) once and runs one call at a time: the backend
// trusts what it is handed, and reads the element size and the reduction
// from the request's Type and Kernel, so it serves any spec's dtypes and
// ops.
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
// send buffer where the kernel allows that much (see DefaultSendBuffer for
// why the send side is small). Under the kernel's
// default limits (208 KiB) both are left to its autotuning: raise
// net.core.wmem_max and rmem_max to 4 MiB to get them. Ranks are best run
// with GOMAXPROCS at their share of the node's CPUs, which gocollrun sets.
// Each frame is a 32-byte header (sequence number, collective, dtype, op,
// count, root, algorithm, flags, length) and its payload, written with one
// vectored write by a per-peer sender goroutine, so that a rank sends,
// receives and reduces at once (a small frame with nothing queued before it
// is written by the calling goroutine, saving a goroutine switch on the
// latency path); a steady-state collective allocates nothing, but for
// one small error value per wake (see below) when it waits long.
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
//   - the vector collectives (vcoll.go): allgatherv straight to every
//     rank up to the small size, a pipelined ring above; reduce_scatter_v
//     a pipelined ring; gatherv and scatterv direct to and from the root;
//     alltoallv pairwise exchange after a round that agrees the counts;
//   - barrier: dissemination;
//   - send and recv: one frame stream per direction and pair.
//
// Results are identical bit for bit on every rank: where two ranks compute
// the same element they combine the same operands in the same order, and
// otherwise one rank computes it and the others copy its bytes. Avg is a sum
// followed by one division (core.Kernel.Finish) of the final value.
//
// # Agreement
//
// Every rank must call with the same kind, dtype, op, count and root, in
// the same order (the sequence number), with options that pick the same
// algorithm and chunk size. A vector collective's count field carries the
// digest of the counts every rank passes alike (core.Request.Digest), so
// its counts are compared as a count is; alltoallv's counts differ by rank
// and are compared pairwise in a round of their own before any data moves
// (vcoll.go). Every frame on a data connection carries its
// sender's call in its header, and a receiver compares that with its own
// call before it reads a byte of payload. What a rank learns that way
// depends on the collective:
//
//   - allreduce, allgather, reduce_scatter, alltoall and barrier: every
//     rank's result depends on every rank's data, so a chain of frames runs
//     from every rank to every other, each hop compared. A rank that
//     completes has thus seen that every call equals its own; and if any
//     two differ, no rank completes, since some frame it needs is never
//     sent (its sender stopped at the difference). Agreement costs these
//     collectives nothing: no extra message, no extra round trip.
//   - broadcast, reduce, gather and scatter: data flows to or from the root
//     only, so a rank could finish without hearing from one that differs,
//     and ranks that disagree on the root would wait for different ranks.
//     The binomial trees of broadcast and reduce therefore run on the
//     rounds of a dissemination barrier, whose pattern does not depend on
//     the root: every round each rank sends a frame (with data, or just its
//     header) to the rank 2^k on and receives one from the rank 2^k back
//     (towards the root for reduce), so they agree in the log2(n) rounds
//     a tree takes anyway. The pipelined chains, gather and scatter first
//     run such a barrier of header-only frames, before any data moves:
//     ceil(log2 n) small messages per call.
//   - send and recv: the receiver compares the sender's header. A send of
//     up to core.EagerSize completes once its frames are handed to the
//     kernel, as a buffered send does; a larger one once the receiver has
//     begun the recv (it acks on its control connection: rendezvous.go), as
//     shm's does. Either way a disagreement is the receiver's error; the
//     message is discarded and the next one lines up.
//
// Ranks whose calls differ may run different algorithms, and then a rank
// can wait for a frame that its peer, following another pattern, never
// sends, while the frames that would show the difference lie unread on
// other connections. So a call that has waited for a while (wakeEvery) is
// woken now and then to look at the next header waiting on each other
// connection without taking it (MSG_PEEK); a header of this call that
// differs from it, or an end frame, starts the settling below. A wake
// interrupts the read with a deadline, for which the net package allocates
// an error value: about 50 bytes per rank per wakeEvery of waiting, never
// more per call.
//
// A rank that reads a frame it did not expect settles the call: it sends
// every peer an end frame holding its own call, then reads each peer's
// data connection, dropping what the peer sent for the call, up to the
// peer's end frame (queued frames of the call that were not yet written
// are not sent). A rank waiting for a frame from a rank that settled gets
// its end frame instead and settles too. So every rank settles, each ends
// with every rank's call, and every stream stops at the same frame
// boundary: the backend stays in step and the next call runs. Each rank
// derives the verdict from the same table of calls: the first field (kind,
// dtype, op, count, root, seq, algorithm, chunk size) on which ranks
// differ, the value most ranks passed (on a tie, the lowest rank's) as the
// reference, and the lowest rank that passed another value as the culprit.
// Every rank returns a *core.MismatchError with its own value that names
// the culprit and its value (the culprit names the lowest rank holding the
// reference). The output buffers of a collective without an agreement
// round may hold partial results when it fails so; the error says not to
// use them.
//
// A rank whose request failed core.Check (Refuse) settles at once with its
// call marked refused, so its peers return a *core.MismatchError on
// "argument" that names it, at once and still in step. A refused send tells
// its peer in place of the message; a refused recv discards the message.
//
// # Failures
//
// Every wait is bounded by the call's context deadline or the group's
// timeout (core.Timeout). A rank that dies or resets a connection makes the
// collective fail on every rank with a *core.PeerError naming it: the rank
// that sees the broken connection tells all others on their control
// connections and interrupts their waits. A rank whose wait times out
// reports whom it waited for to every rank and, after a short grace,
// follows those reports to the rank that held everyone up (it never
// arrived, or hangs) and names that one, not the innocent ranks waiting on
// it. A cancelled context, or Abort (which any goroutine may call),
// abandons the call, and the others are told which rank left.
//
// After any such failure the streams between ranks are out of step, so the
// backend stays failed (every later call returns the error) and must be
// closed and rebuilt. Close says goodbye to every peer, closes every
// connection and ends every goroutine the backend started.
package tcp
