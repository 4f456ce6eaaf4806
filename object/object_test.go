package object_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/gocoll/gocoll/core"
	"github.com/gocoll/gocoll/dispatch"
	"github.com/gocoll/gocoll/generated/coll"
	"github.com/gocoll/gocoll/internal/proctest"
	"github.com/gocoll/gocoll/object"
)

func TestMain(m *testing.M) {
	proctest.Register("objects", objectsBody)
	proctest.Register("encode-fail", encodeFailBody)
	proctest.Main(m)
}

const envBackend = "GOCOLL_TEST_BACKEND"

// rankTimeout bounds every wait in the ranks. The failure probes must end
// long before it: their peers fail fast or the test fails.
const rankTimeout = 60 * time.Second

// backends the tests run on; nodes > 0 simulates that many nodes
// (GOCOLL_NODE_ID per rank), where dispatch picks the hierarchical backend.
var backends = []struct {
	name, label string
	nodes       int
	nps         []int
}{
	{name: "shm", label: "shm", nps: []int{1, 2, 3, 4}},
	{name: "tcp", label: "tcp", nps: []int{1, 2, 3, 4}},
	{name: "auto", label: "auto-2nodes", nodes: 2, nps: []int{3, 4}},
}

func run(t *testing.T, body string) {
	for _, be := range backends {
		t.Run(be.label, func(t *testing.T) {
			for _, np := range be.nps {
				t.Run(fmt.Sprintf("np%d", np), func(t *testing.T) {
					res := proctest.Run(t, body, np, proctest.Timeout(3*time.Minute),
						proctest.Env(envBackend+"="+be.name),
						proctest.RankEnv(func(r int) []string {
							if be.nodes > 0 {
								return []string{fmt.Sprintf("GOCOLL_NODE_ID=testnode%d", r*be.nodes/np)}
							}
							return nil
						}))
					for _, r := range res {
						t.Logf("rank %d (%v): %s", r.Rank, r.Duration, strings.TrimSpace(r.Output))
					}
				})
			}
		})
	}
}

// TestObjects moves nested structs, maps, empty values, byte strings on
// both sides of the header's inline size and 10 MiB values with every
// object collective, and checks every rank's result.
func TestObjects(t *testing.T) { run(t, "objects") }

// TestEncodeFailure has one rank pass a value gob cannot encode to each
// collective: that rank gets the codec's error, every other rank an
// *object.EncodeError naming it, at once, and the next call works.
func TestEncodeFailure(t *testing.T) { run(t, "encode-fail") }

func initComm(ctx context.Context, r *proctest.Rank) (*dispatch.Comm, error) {
	return dispatch.Init(ctx,
		dispatch.WithRank(r.Rank),
		dispatch.WithSize(r.Size),
		dispatch.WithStore(r.Store),
		dispatch.WithSecret(r.Secret),
		dispatch.WithBackend(os.Getenv(envBackend)),
		dispatch.WithTimeout(rankTimeout),
	)
}

type inner struct {
	Name    string
	Weights []float64
	Tags    map[string]int
}

type config struct {
	ID     int
	Inner  inner
	Ptr    *inner
	Layers []inner
	ByName map[string]inner
	Blob   []byte
}

// value is rank r's value, with a blob of n bytes.
func value(r, n int) config {
	in := inner{Name: "rank" + strconv.Itoa(r), Weights: []float64{float64(r), -0.5, 1e300}, Tags: map[string]int{"r": r, "x": 7}}
	return config{
		ID:     r,
		Inner:  in,
		Ptr:    &inner{Name: "ptr", Tags: map[string]int{"deep": r * 3}},
		Layers: []inner{in, {Name: "second"}},
		ByName: map[string]inner{"a": in, "b": {Weights: []float64{float64(r)}}},
		Blob:   blob(r, n),
	}
}

// blob is n bytes that differ by rank and position.
func blob(r, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*31 + r*7 + i>>8)
	}
	return b
}

// same compares decoded values, for which gob makes empty slices and maps
// nil. Byte slices that are not both empty compare with bytes.Equal: cmp
// walks 10 MiB by reflection for most of a minute.
func same(got, want any) error {
	if d := cmp.Diff(want, got, cmpopts.EquateEmpty(),
		cmp.FilterValues(func(x, y []byte) bool { return len(x) > 0 || len(y) > 0 }, cmp.Comparer(bytes.Equal))); d != "" {
		return fmt.Errorf("(-want +got):\n%s", d)
	}
	return nil
}

const big = 10 << 20

type jsonCodec struct{}

func (jsonCodec) Marshal(v any) ([]byte, error)      { return json.Marshal(v) }
func (jsonCodec) Unmarshal(data []byte, v any) error { return json.Unmarshal(data, v) }

func objectsBody(ctx context.Context, r *proctest.Rank) error {
	c, err := initComm(ctx, r)
	if err != nil {
		return err
	}
	defer c.Close()
	np, me := c.Size(), c.Rank()
	last := np - 1

	// Nested structs and maps, small enough for one exchange each.
	got, err := object.Broadcast(ctx, c, value(me, 10), last)
	if err != nil {
		return fmt.Errorf("broadcast: %w", err)
	}
	if err := same(got, value(last, 10)); err != nil {
		return fmt.Errorf("broadcast: %w", err)
	}
	all, err := object.Allgather(ctx, c, value(me, 100))
	if err != nil {
		return fmt.Errorf("allgather: %w", err)
	}
	var want []config
	for q := range np {
		want = append(want, value(q, 100))
	}
	if err := same(all, want); err != nil {
		return fmt.Errorf("allgather: %w", err)
	}
	root := np / 2
	gathered, err := object.Gather(ctx, c, value(me, 3), root)
	if err != nil {
		return fmt.Errorf("gather: %w", err)
	}
	want = want[:0]
	if me == root {
		for q := range np {
			want = append(want, value(q, 3))
		}
	}
	if err := same(gathered, want); err != nil {
		return fmt.Errorf("gather: %w", err)
	}
	var parts []config
	if me == root {
		for q := range np {
			parts = append(parts, value(q+100, q))
		}
	}
	part, err := object.Scatter(ctx, c, parts, root)
	if err != nil {
		return fmt.Errorf("scatter: %w", err)
	}
	if err := same(part, value(me+100, me)); err != nil {
		return fmt.Errorf("scatter: %w", err)
	}
	m, err := object.Broadcast(ctx, c, map[string][]int{"a": {1, 2}, "b": nil}, 0)
	if err != nil {
		return fmt.Errorf("broadcast of a map: %w", err)
	}
	if err := same(m, map[string][]int{"a": {1, 2}, "b": nil}); err != nil {
		return fmt.Errorf("broadcast of a map: %w", err)
	}

	// A codec of the caller's: JSON, which keeps empty slices.
	js, err := object.Allgather(ctx, c, []int{me, -me}, object.WithCodec(jsonCodec{}))
	if err != nil {
		return fmt.Errorf("allgather with a JSON codec: %w", err)
	}
	for q := range np {
		if !slices.Equal(js[q], []int{q, -q}) {
			return fmt.Errorf("allgather with a JSON codec: rank %d's value came back as %v", q, js[q])
		}
	}
	// A rank that cannot decode what it received fails alone, and the
	// next call still lines up.
	if me == 0 {
		_, err = object.Broadcast(ctx, c, "not a number", 0)
	} else {
		_, err = object.Broadcast(ctx, c, 0, 0)
	}
	if (err != nil) != (me != 0) {
		return fmt.Errorf("broadcast of a string decoded as an int: %v", err)
	}

	// Empty values: a zero struct, an empty map, an empty string.
	if got, err := object.Broadcast(ctx, c, config{}, 0); err != nil || same(got, config{}) != nil {
		return fmt.Errorf("broadcast of a zero struct: %+v, %v", got, err)
	}
	if got, err := object.Allgather(ctx, c, map[int]string{}); err != nil || len(got) != np || slices.ContainsFunc(got, func(m map[int]string) bool { return len(m) != 0 }) {
		return fmt.Errorf("allgather of empty maps: %v, %v", got, err)
	}
	if got, err := object.Scatter(ctx, c, make([]string, np), 0); err != nil || got != "" {
		return fmt.Errorf("scatter of empty strings: %q, %v", got, err)
	}
	if got, err := object.Gather(ctx, c, "", 0); err != nil || (me == 0) != (len(got) == np) || slices.ContainsFunc(got, func(s string) bool { return s != "" }) {
		return fmt.Errorf("gather of empty strings: %q, %v", got, err)
	}

	// The byte forms, on both sides of the inline size, ragged by rank.
	sizes := []int{0, 1, object.InlineSize - 1, object.InlineSize, object.InlineSize + 1, 3*object.InlineSize + 5}
	for _, n := range sizes {
		mine := func(q int) []byte { return blob(q, (n+q*(object.InlineSize/2+1))%(4*object.InlineSize)) }
		if n == 0 {
			mine = func(int) []byte { return nil }
		}
		b, err := object.BroadcastBytes(ctx, c, mine(me), last)
		if err != nil || !bytes.Equal(b, mine(last)) {
			return fmt.Errorf("broadcast of %d bytes: %d bytes back, %v", len(mine(last)), len(b), err)
		}
		bs, err := object.AllgatherBytes(ctx, c, mine(me))
		if err != nil {
			return fmt.Errorf("allgather around %d bytes: %w", n, err)
		}
		for q := range np {
			if !bytes.Equal(bs[q], mine(q)) {
				return fmt.Errorf("allgather around %d bytes: rank %d's %d bytes came back as %d different ones", n, q, len(mine(q)), len(bs[q]))
			}
		}
		bs, err = object.GatherBytes(ctx, c, mine(me), last)
		if err != nil || (me == last) != (len(bs) == np) {
			return fmt.Errorf("gather around %d bytes: %d results, %v", n, len(bs), err)
		}
		for q := range bs {
			if !bytes.Equal(bs[q], mine(q)) {
				return fmt.Errorf("gather around %d bytes: rank %d's %d bytes came back as %d different ones", n, q, len(mine(q)), len(bs[q]))
			}
		}
		var ps [][]byte
		if me == 0 {
			for q := range np {
				ps = append(ps, mine(q+1))
			}
		}
		b, err = object.ScatterBytes(ctx, c, ps, 0)
		if err != nil || !bytes.Equal(b, mine(me+1)) {
			return fmt.Errorf("scatter around %d bytes: %d bytes for %d, %v", n, len(b), len(mine(me+1)), err)
		}
	}

	// 10 MiB values: from the root, from one rank beside small ones
	// (ragged), and from every rank.
	got, err = object.Broadcast(ctx, c, value(me, big), 0)
	if err != nil {
		return fmt.Errorf("broadcast of 10 MiB: %w", err)
	}
	if err := same(got, value(0, big)); err != nil {
		return fmt.Errorf("broadcast of 10 MiB: %w", err)
	}
	n := 1
	if me == last {
		n = big
	}
	all, err = object.Allgather(ctx, c, value(me, n))
	if err != nil {
		return fmt.Errorf("allgather with 10 MiB from rank %d: %w", last, err)
	}
	for q := range np {
		n := 1
		if q == last {
			n = big
		}
		if err := same(all[q], value(q, n)); err != nil {
			return fmt.Errorf("allgather with 10 MiB from rank %d: rank %d's value: %w", last, q, err)
		}
	}
	all, err = object.Allgather(ctx, c, value(me, big))
	if err != nil {
		return fmt.Errorf("allgather of 10 MiB from every rank: %w", err)
	}
	for q := range np {
		if err := same(all[q], value(q, big)); err != nil {
			return fmt.Errorf("allgather of 10 MiB from every rank: rank %d's value: %w", q, err)
		}
	}
	gathered, err = object.Gather(ctx, c, value(me, big), 0)
	if err != nil {
		return fmt.Errorf("gather of 10 MiB: %w", err)
	}
	for q := range gathered {
		if err := same(gathered[q], value(q, big)); err != nil {
			return fmt.Errorf("gather of 10 MiB: rank %d's value: %w", q, err)
		}
	}
	parts = nil
	if me == 0 {
		for q := range np {
			parts = append(parts, value(q, big))
		}
	}
	part, err = object.Scatter(ctx, c, parts, 0)
	if err != nil {
		return fmt.Errorf("scatter of 10 MiB: %w", err)
	}
	return same(part, value(me, big))
}

// unencodable holds, on the failing rank, a chan in an interface field:
// gob cannot encode it (and, unlike a chan field, does not skip it).
type unencodable struct {
	ID  int
	Any any
}

// fastEnough bounds how long a failed call may take: a fraction of the
// timeout, so that a peer that waited for the timeout fails the test.
const fastEnough = rankTimeout / 4

func encodeFailBody(ctx context.Context, r *proctest.Rank) error {
	c, err := initComm(ctx, r)
	if err != nil {
		return err
	}
	defer c.Close()
	np, me := c.Size(), c.Rank()
	bad := np - 1
	val := func(q int) unencodable {
		if q == bad {
			return unencodable{ID: q, Any: make(chan int)}
		}
		return unencodable{ID: q}
	}
	// check wants err to be an *object.EncodeError naming bad: on bad
	// itself wrapping the codec's error, elsewhere quoting it.
	check := func(what string, start time.Time, err error, culprit int) error {
		if d := time.Since(start); d > fastEnough {
			return fmt.Errorf("%s: the failure took %v: a rank waited for a timeout", what, d)
		}
		var ee *object.EncodeError
		if !errors.As(err, &ee) || !slices.Equal(ee.Ranks, []int{culprit}) {
			return fmt.Errorf("%s: got %v, want an *object.EncodeError naming rank %d", what, err, culprit)
		}
		if !strings.Contains(err.Error(), fmt.Sprintf("rank %d ", culprit)) || !strings.Contains(err.Error(), "chan") {
			return fmt.Errorf("%s: %q does not name rank %d and the chan it could not encode", what, err, culprit)
		}
		fmt.Printf("%s: %v\n", what, err)
		return nil
	}
	start := time.Now()
	_, err = object.Allgather(ctx, c, val(me))
	if err := check("allgather", start, err, bad); err != nil {
		return err
	}
	start = time.Now()
	_, err = object.Gather(ctx, c, val(me), 0)
	if err := check("gather", start, err, bad); err != nil {
		return err
	}
	start = time.Now()
	_, err = object.Broadcast(ctx, c, val(me), bad)
	if err := check("broadcast", start, err, bad); err != nil {
		return err
	}
	var vs []unencodable
	if me == bad {
		for q := range np {
			vs = append(vs, val(q))
		}
	}
	start = time.Now()
	_, err = object.Scatter(ctx, c, vs, bad)
	if err := check("scatter", start, err, bad); err != nil {
		return err
	}
	// A func at the top level: gob refuses it too.
	var f func() int
	if me == 0 {
		f = func() int { return 1 }
	}
	start = time.Now()
	_, err = object.Broadcast(ctx, c, f, 0)
	if d := time.Since(start); d > fastEnough {
		return fmt.Errorf("broadcast of a func: the failure took %v", d)
	}
	var ee *object.EncodeError
	if !errors.As(err, &ee) || !slices.Equal(ee.Ranks, []int{0}) {
		return fmt.Errorf("broadcast of a func: got %v, want an *object.EncodeError naming rank 0", err)
	}
	fmt.Printf("broadcast of a func: %v\n", err)

	// The root passes the wrong number of values to scatter.
	start = time.Now()
	_, err = object.Scatter(ctx, c, make([]int, np+1), 0)
	if !errors.As(err, &ee) || !slices.Equal(ee.Ranks, []int{0}) || !strings.Contains(err.Error(), "one per rank") || time.Since(start) > fastEnough {
		return fmt.Errorf("scatter of %d values at %d ranks: got %v, want an *object.EncodeError naming the root on every rank", np+1, np, err)
	}
	if me == 0 && !errors.Is(err, core.ErrInvalid) {
		return fmt.Errorf("scatter of %d values at %d ranks: the root's %v does not wrap core.ErrInvalid", np+1, np, err)
	}

	// The ranks disagree on gather's root.
	if np > 1 {
		root := 0
		if me == bad {
			root = 1
		}
		start = time.Now()
		_, err = object.GatherBytes(ctx, c, []byte("x"), root)
		var me2 *core.MismatchError
		if !errors.As(err, &me2) || me2.Field != "root" || time.Since(start) > fastEnough {
			return fmt.Errorf("gather with rank %d passing root 1: got %v, want a *core.MismatchError on root", bad, err)
		}
		if me != bad && me2.Peer != bad {
			return fmt.Errorf("gather with rank %d passing root 1: %v does not name rank %d", bad, err, bad)
		}
	}

	// Every failure left the ranks in step: the next calls work.
	got, err := object.Allgather(ctx, c, unencodable{ID: me})
	if err != nil {
		return fmt.Errorf("allgather after the failures: %w", err)
	}
	for q := range np {
		if got[q].ID != q {
			return fmt.Errorf("allgather after the failures: element %d holds rank %d's value", q, got[q].ID)
		}
	}
	send, recv := make([]int32, 5), make([]int32, 5)
	return coll.AllreduceInt32(ctx, c, send, recv, coll.OpSum)
}
