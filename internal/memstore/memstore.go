// Package memstore is an in-process core.Store for tests that run ranks as
// goroutines. Processes meet through the TCP store of package store instead.
package memstore

import (
	"context"
	"strconv"
	"sync"
)

// Store is a map guarded by a mutex, with waiters woken on every change.
type Store struct {
	mu      sync.Mutex
	m       map[string][]byte
	changed chan struct{} // closed and replaced on every write
}

// New returns an empty store.
func New() *Store {
	return &Store{m: map[string][]byte{}, changed: make(chan struct{})}
}

func (s *Store) notifyLocked() {
	close(s.changed)
	s.changed = make(chan struct{})
}

// Set implements core.Store.
func (s *Store) Set(_ context.Context, key string, value []byte) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.m[key] = append([]byte(nil), value...)
	s.notifyLocked()
	return nil
}

// Get implements core.Store.
func (s *Store) Get(ctx context.Context, key string) ([]byte, error) {
	for {
		s.mu.Lock()
		v, ok := s.m[key]
		ch := s.changed
		s.mu.Unlock()
		if ok {
			return append([]byte(nil), v...), nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// Add implements core.Store.
func (s *Store) Add(_ context.Context, key string, delta int64) (int64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	n, _ := strconv.ParseInt(string(s.m[key]), 10, 64)
	n += delta
	s.m[key] = []byte(strconv.FormatInt(n, 10))
	s.notifyLocked()
	return n, nil
}

// Delete implements core.Store.
func (s *Store) Delete(_ context.Context, key string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.m, key)
	s.notifyLocked()
	return nil
}
