// Package object runs collectives on Go values and on byte strings of
// any length, where the typed API (generated/coll) moves fixed counts of
// one dtype: what torch does with broadcast_object_list and
// all_gather_object.
//
// Broadcast, Allgather, Gather and Scatter (the BroadcastObject,
// AllgatherObject, GatherObject and ScatterObject) encode each value with
// encoding/gob, or a Codec passed with WithCodec, and move the encodings
// with the byte forms BroadcastBytes, AllgatherBytes, GatherBytes and
// ScatterBytes, whose lengths may differ by rank and need not be known in
// advance. Like every collective, each must be called on every rank of
// the communicator, in the same order as the others.
//
// # How the bytes move
//
// Every byte form first moves a fixed header of HeaderSize bytes per
// value, carrying its length and its first InlineSize bytes, with the
// communicator's fixed-count collective of the same kind (for Gather, an
// allgather; see GatherBytes). A value that fits the header needs nothing
// more, so small values take one exchange. The rest of longer values
// follows in a second exchange whose sizes every rank now knows:
// a broadcast, an allgatherv or a gatherv (each rest at its own length,
// straight into the result), or, for Scatter, whose ranks know only their
// own length, sends from the root to each rank with more to move.
//
// # Which dtype carries the bytes
//
// The bytes travel as a dtype one byte wide. Rather than import a spec's
// generated package, the package takes the registered one-byte dtype with
// the lowest id, an unsigned one if there is any, from core's registry
// (core.Types): any program that has a communicator to pass imports a
// spec's generated package (generated/coll registers uint8), and every
// rank running the same program finds the same dtype. Collectives that do
// not reduce move a dtype's bytes unchanged, so which one-byte dtype it is
// does not matter. With none registered, the calls return an error
// wrapping core.ErrUnsupported that says what to import.
//
// # Errors
//
// A value the codec cannot encode on one rank fails the call on every
// rank, at once, rather than leaving its peers to wait: the rank still
// takes part in the header exchange, with a header that carries its error
// in place of a length. The rank whose value failed returns an
// *EncodeError wrapping the codec's error; its peers an *EncodeError
// naming it and quoting that error's text. The collectives completed, so
// the communicator stays usable and the next call lines up. A value a
// rank cannot decode fails that rank's call only (its peers' calls
// completed). Errors of the communicator (a dead peer, a root that is not
// a rank, ranks that disagree on the root) are returned as the
// collectives return them.
package object
