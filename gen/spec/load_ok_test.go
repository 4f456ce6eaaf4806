package spec

import "testing"

func TestLoadRepoSpec(t *testing.T) {
	s, err := Load("../../spec/collectives.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if len(s.DTypes) != 10 || len(s.Ops) != 8 || len(s.Collectives) != 11 {
		t.Fatalf("got %d dtypes, %d ops, %d collectives", len(s.DTypes), len(s.Ops), len(s.Collectives))
	}
}
