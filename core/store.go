package core

import (
	"context"
	"time"
)

// Store is the rendezvous key-value store ranks meet through (the role of
// torch's TCPStore and oneCCL's KVS). Backends use it to exchange addresses,
// segment names and liveness at setup; it is never on a collective's data path.
type Store interface {
	// Set stores value under key, replacing any earlier value.
	Set(ctx context.Context, key string, value []byte) error
	// Get returns the value of key, waiting until some client sets it or
	// ctx ends.
	Get(ctx context.Context, key string) ([]byte, error)
	// Add adds delta to the integer counter under key (0 if absent) and
	// returns the new value, atomically.
	Add(ctx context.Context, key string, delta int64) (int64, error)
	// Delete removes key; removing a missing key is not an error.
	Delete(ctx context.Context, key string) error
}

// Group is what a backend is built from: who this rank is among whom, where
// they meet, and how long to wait for them.
type Group struct {
	Rank int
	Size int
	// Store is namespaced for this backend instance (see WithPrefix): keys
	// a backend writes cannot collide with another backend's or job's.
	Store Store
	// JobID is unique to this job; shared resources carry it in their names.
	JobID string
	// Secret is the job's shared secret; connections between ranks must
	// prove they hold it.
	Secret []byte
	// Timeout bounds every wait; a context deadline can only shorten it.
	Timeout time.Duration
}

// WithPrefix returns a view of s in which every key is prefixed with prefix.
func WithPrefix(s Store, prefix string) Store {
	if p, ok := s.(prefixed); ok {
		return prefixed{p.s, p.prefix + prefix}
	}
	return prefixed{s, prefix}
}

type prefixed struct {
	s      Store
	prefix string
}

func (p prefixed) Set(ctx context.Context, key string, value []byte) error {
	return p.s.Set(ctx, p.prefix+key, value)
}

func (p prefixed) Get(ctx context.Context, key string) ([]byte, error) {
	return p.s.Get(ctx, p.prefix+key)
}

func (p prefixed) Add(ctx context.Context, key string, delta int64) (int64, error) {
	return p.s.Add(ctx, p.prefix+key, delta)
}

func (p prefixed) Delete(ctx context.Context, key string) error {
	return p.s.Delete(ctx, p.prefix+key)
}
