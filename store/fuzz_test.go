package store

import (
	"bytes"
	"reflect"
	"testing"
)

// FuzzDecodeFrame feeds arbitrary bytes to the server's frame reader and
// request decoder: they must never panic or allocate beyond the bound, and
// whatever they accept must re-encode to the same bytes. The seed corpus
// is in testdata/fuzz/FuzzDecodeFrame; CI runs
//
//	go test ./store -run '^$' -fuzz FuzzDecodeFrame -fuzztime 10s
func FuzzDecodeFrame(f *testing.F) {
	for _, r := range []*request{
		{op: opSet, id: 1, keys: []string{"k"}, values: [][]byte{[]byte("v")}},
		{op: opGet, id: 2, keys: []string{"key"}},
		{op: opAdd, id: 3, keys: []string{"ctr"}, delta: -5},
		{op: opCAS, id: 4, flags: flagCASAbsent, keys: []string{"k"}, values: [][]byte{nil, []byte("x")}},
		{op: opWait, id: 5, keys: []string{"a", "b", "c"}},
		{op: opMultiSet, id: 6, keys: []string{"a", "b"}, values: [][]byte{[]byte("1"), nil}},
		{op: opCancel, id: 7},
		{op: opSet, id: 8, flags: flagEphemeral, keys: []string{"alive/3"}, values: [][]byte{nil}},
		{op: opMultiGet, id: 9, delta: 2, keys: []string{"h/0", "h/1", "alive/0", "alive/1"}},
	} {
		f.Add(encodeRequest(r))
	}
	f.Add([]byte{0, 0, 0, 0})
	f.Add([]byte{0xff, 0xff, 0xff, 0xff})
	const max = 1 << 16
	f.Fuzz(func(t *testing.T, data []byte) {
		body, err := readFrame(bytes.NewReader(data), max)
		if err != nil {
			return
		}
		if len(body) > max {
			t.Fatalf("readFrame returned %d bytes, limit %d", len(body), max)
		}
		req, err := decodeRequest(body)
		if err != nil {
			return
		}
		if err := req.validate(); err != nil {
			t.Fatalf("decodeRequest accepted an invalid request: %v", err)
		}
		again := encodeRequest(req)
		if !bytes.Equal(again[frameHeader:], body) {
			t.Fatalf("re-encoding differs:\n got %x\nwant %x", again[frameHeader:], body)
		}
		// Responses share the decoder; check them on the same input.
		if resp, err := decodeResponse(body); err == nil {
			back, err := decodeResponse(encodeResponse(resp)[frameHeader:])
			if err != nil || !reflect.DeepEqual(normalize(back), normalize(resp)) {
				t.Fatalf("response round trip: %+v -> %+v (%v)", resp, back, err)
			}
		}
	})
}

// normalize maps empty values to nil so DeepEqual compares content.
func normalize(r *response) *response {
	c := *r
	c.values = nil
	for _, v := range r.values {
		if len(v) == 0 {
			v = nil
		}
		c.values = append(c.values, v)
	}
	return &c
}
