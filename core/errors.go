package core

import (
	"errors"
	"fmt"
	"strings"
)

// ErrClosed is returned by a collective on a closed communicator or backend.
var ErrClosed = errors.New("gocoll: communicator is closed")

// ErrUnsupported marks a dtype/op/collective combination the spec or the
// backend does not provide; errors wrapping it say which. Like the other
// argument sentinels its text has no package prefix: it is read inside a
// message that has one ("gocoll: allreduce: unsupported: ...").
var ErrUnsupported = errors.New("unsupported")

// ErrBufferLength marks a buffer whose length does not fit the collective
// (for example recv shorter than send in an allreduce); errors wrapping it
// say which buffer and what length it needs.
var ErrBufferLength = errors.New("buffer length does not fit the collective")

// ErrInvalid marks any other argument one rank can tell is wrong alone: a
// count out of range, a root or peer that is not a rank, buffers that
// overlap. Errors wrapping it say which.
var ErrInvalid = errors.New("invalid argument")

// ErrConcurrentUse is returned when a call starts on a communicator while
// another is in flight there. Collectives pair calls by their order on
// each rank, so two goroutines sharing a communicator would pair different
// goroutines' calls across ranks; rather than return mispaired data, both
// calls fail, the communicator is aborted (its peers' calls fail too) and
// stays failed. What cannot be seen is use from several goroutines whose
// calls never overlap on a rank: that is indistinguishable from one
// goroutine calling in turn, and pairs the calls in the order they came.
var ErrConcurrentUse = errors.New("gocoll: two calls in flight on one communicator: a communicator runs one call at a time, in the same order on every rank; give each goroutine its own communicator")

// MismatchError reports that ranks called a collective with different
// arguments. Every rank gets it; no buffer holds a partial result that
// looks valid.
type MismatchError struct {
	Seq    uint64 // collective sequence number on this communicator
	Field  string // "kind", "dtype", "op", "count", "counts", "root", "peer", "seq", "argument"
	Rank   int    // this rank
	Mine   string // this rank's value
	Peer   int    // a rank that disagrees
	Theirs string // that rank's value
}

func (e *MismatchError) Error() string {
	if e.Field == "argument" {
		if e.Mine == "invalid" {
			return fmt.Sprintf("gocoll: collective #%d: rank %d passed an invalid argument (its own error says which)", e.Seq, e.Rank)
		}
		return fmt.Sprintf("gocoll: collective #%d: rank %d passed an invalid argument (%s; its own error says which); rank %d's call is abandoned",
			e.Seq, e.Peer, e.Theirs, e.Rank)
	}
	return fmt.Sprintf("gocoll: collective #%d: ranks disagree on %s: rank %d passed %s, rank %d passed %s",
		e.Seq, e.Field, e.Rank, e.Mine, e.Peer, e.Theirs)
}

// PeerError reports ranks that did not take part: they died, closed their
// connection, or had not arrived when the timeout passed. Ranks lists them.
type PeerError struct {
	Op    string // what was being waited for, e.g. "allreduce #12", "barrier"
	Ranks []int  // the ranks that failed or never arrived
	Err   error  // the cause: context.DeadlineExceeded, io.EOF, ...
}

func (e *PeerError) Error() string {
	rs := make([]string, len(e.Ranks))
	for i, r := range e.Ranks {
		rs[i] = fmt.Sprint(r)
	}
	return fmt.Sprintf("gocoll: %s: rank(s) %s did not take part: %v", e.Op, strings.Join(rs, ","), e.Err)
}

func (e *PeerError) Unwrap() error { return e.Err }

// Describe says what a call asked for, from its raw fields (a refused
// call's may be anything), for a peer's error: "allreduce of 16 float32,
// op sum", "broadcast of 4 int8, root 2". Every backend describes a call
// this way, so a peer's error reads the same on all of them.
func Describe(kind Kind, dtype DType, op Op, count int64, root int64) string {
	switch {
	case kind == KindBarrier:
		return kind.String()
	case kind == 0 && dtype == 0 && count == 0:
		return kind.String() + " (an empty or nil request)"
	}
	s := fmt.Sprintf("%v of %d %v", kind, count, dtype)
	if op != 0 {
		s += ", op " + op.String()
	}
	if root != 0 {
		s += fmt.Sprintf(", root %d", root)
	}
	return s
}
