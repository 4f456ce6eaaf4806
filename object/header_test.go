package object

import (
	"encoding/binary"
	"errors"
	"strings"
	"testing"
)

// A header carries a value's length, the root and its first bytes, or an
// error's text (cut to what fits) in place of the length; a length no
// rank could send is refused.
func TestHeader(t *testing.T) {
	h := make([]byte, HeaderSize)
	data := []byte(strings.Repeat("x", InlineSize+5))
	putHeader(h, data, nil, 3)
	if n, err := header(h); n != len(data) || err != nil || headerRoot(h) != 3 {
		t.Fatalf("header of %d bytes: got %d, %v, root %d", len(data), n, err, headerRoot(h))
	}
	if got := string(h[preamble:]); got != string(data[:InlineSize]) {
		t.Fatalf("the header carries %q..., want the value's first %d bytes", got[:8], InlineSize)
	}

	long := errors.New(strings.Repeat("e", 2*HeaderSize))
	putHeader(h, data, long, 1)
	n, err := header(h)
	if n != failed || err == nil || len(err.Error()) != InlineSize-4 || headerRoot(h) != 1 {
		t.Fatalf("header of a failure: got %d, %d bytes of text, root %d", n, len(err.Error()), headerRoot(h))
	}

	binary.LittleEndian.PutUint64(h, uint64(1)<<63|5)
	if _, err := header(h); err == nil {
		t.Fatal("a negative length other than the failure mark was accepted")
	}
}
