package spec

import "testing"

// TestLoadRepoSpec loads gocoll's own spec, which must list every builtin
// dtype and op and every runtime collective: the tables a downstream spec
// is held to are gocoll's spec, complete.
func TestLoadRepoSpec(t *testing.T) {
	s, err := Load("../../spec/collectives.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if len(s.DTypes) != len(BuiltinDTypes) || len(s.Ops) != len(BuiltinOps) || len(s.Collectives) != len(RuntimeCollectives) {
		t.Fatalf("got %d dtypes, %d ops, %d collectives; the builtin tables have %d, %d, %d",
			len(s.DTypes), len(s.Ops), len(s.Collectives), len(BuiltinDTypes), len(BuiltinOps), len(RuntimeCollectives))
	}
	for _, d := range s.DTypes {
		if d.ID >= FirstDownstreamID {
			t.Errorf("gocoll's dtype %s has id %d, among the ids left to downstream specs", d.Name, d.ID)
		}
	}
}
