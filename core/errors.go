package core

import (
	"errors"
	"fmt"
	"strings"
)

// ErrClosed is returned by a collective on a closed communicator or backend.
var ErrClosed = errors.New("gocoll: communicator is closed")

// ErrUnsupported marks a dtype/op/collective combination the spec or the
// backend does not provide; errors wrapping it say which.
var ErrUnsupported = errors.New("gocoll: unsupported")

// MismatchError reports that ranks called a collective with different
// arguments. Every rank gets it; no buffer holds a partial result that
// looks valid.
type MismatchError struct {
	Seq    uint64 // collective sequence number on this communicator
	Field  string // "kind", "dtype", "op", "count", "root", ...
	Rank   int    // this rank
	Mine   string // this rank's value
	Peer   int    // a rank that disagrees
	Theirs string // that rank's value
}

func (e *MismatchError) Error() string {
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
